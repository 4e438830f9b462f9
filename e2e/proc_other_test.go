//go:build !linux

package e2e

import "os/exec"

// canStopCleanly is false: without process groups and SIGTERM, stopProc
// kills, and the exit status says nothing.
const canStopCleanly = false

func setProcAttr(*exec.Cmd) {}

func stopProc(cmd *exec.Cmd) { killProc(cmd) }

func killProc(cmd *exec.Cmd) {
	if cmd.Process != nil {
		_ = cmd.Process.Kill()
	}
}

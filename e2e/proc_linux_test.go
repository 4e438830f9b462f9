//go:build linux

package e2e

import (
	"os/exec"
	"syscall"
)

// canStopCleanly: stopProc sends SIGTERM, which the example server answers
// with a graceful stop and exit status 0.
const canStopCleanly = true

// setProcAttr puts the process in its own process group, so that killing
// the group also kills anything it started, and has the kernel kill it if
// the test binary dies first (a -timeout panic runs no cleanup).
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// stopProc asks the process group to terminate.
func stopProc(cmd *exec.Cmd) {
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	}
}

// killProc kills the process group.
func killProc(cmd *exec.Cmd) {
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}

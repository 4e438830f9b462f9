//go:build linux

package redistest

import (
	"os/exec"
	"syscall"
)

// setProcAttr has the kernel kill the server if the test binary dies
// first (a -timeout panic runs no cleanup).
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

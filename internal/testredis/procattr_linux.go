package testredis

import (
	"os/exec"
	"syscall"
)

// DieWithTest has the kernel kill cmd when the test binary dies, so that
// a test that fails hard (a panic, a timeout) leaves no server behind.
func DieWithTest(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

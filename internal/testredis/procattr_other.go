//go:build !linux

package testredis

import "os/exec"

// DieWithTest: only Linux can have a child die with its parent; elsewhere
// the tests' cleanups stop the servers.
func DieWithTest(*exec.Cmd) {}

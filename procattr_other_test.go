//go:build !linux

package apikey

import "os/exec"

// dieWithTest: only Linux can have a child die with its parent; elsewhere
// the tests' cleanups stop the servers.
func dieWithTest(*exec.Cmd) {}

//go:build linux

package testfleet

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// sharedBuild returns the folder where the test binaries of this `go test`
// run (the children of one go command: the same parent process, known by
// its pid and start time, so that a pid used again is another run) build
// Caddy, locked until unlock is called so that one builds while the others
// wait.
func sharedBuild() (dir string, unlock func(), err error) {
	ppid := os.Getppid()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", ppid))
	if err != nil {
		return "", nil, err
	}
	// The fields after the command's name, which is in parentheses and
	// may hold spaces: the 22nd field of the line, the start time, is the
	// 20th of them.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(fields) < 20 {
		return "", nil, fmt.Errorf("/proc/%d/stat: too few fields", ppid)
	}
	dir = filepath.Join(os.TempDir(), fmt.Sprintf("apikey-caddy-%d-%s", ppid, fields[19]))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", nil, err
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return "", nil, err
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		lock.Close()
		return "", nil, err
	}
	return dir, func() { lock.Close() }, nil
}

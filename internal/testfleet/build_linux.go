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
	start, err := startTime(ppid)
	if err != nil {
		return "", nil, err
	}
	removeFinishedBuilds()
	dir = filepath.Join(os.TempDir(), fmt.Sprintf("%s%d-%s", buildPrefix, ppid, start))
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

// buildPrefix starts the name of each run's build folder, which the pid
// and start time of the run's go command end.
const buildPrefix = "apikey-caddy-"

// startTime is the start time of process pid, which tells it from a later
// process given the same pid.
func startTime(pid int) (string, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", err
	}
	// The fields after the command's name, which is in parentheses and
	// may hold spaces: the 22nd field of the line, the start time, is the
	// 20th of them.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(fields) < 20 {
		return "", fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	return fields[19], nil
}

// removeFinishedBuilds removes the build folders of earlier runs whose go
// command has exited (a Caddy binary of some 60 MB each), so that they do
// not pile up in the temporary folder; those of runs still going are kept.
func removeFinishedBuilds() {
	tmp := os.TempDir()
	entries, err := os.ReadDir(tmp)
	if err != nil {
		return
	}
	for _, e := range entries {
		var pid int
		var start string
		rest, ok := strings.CutPrefix(e.Name(), buildPrefix)
		if !ok || !e.IsDir() {
			continue
		}
		if n, err := fmt.Sscanf(rest, "%d-%s", &pid, &start); n != 2 || err != nil {
			continue
		}
		if now, err := startTime(pid); err == nil && now == start {
			continue // its run goes on
		}
		_ = os.RemoveAll(filepath.Join(tmp, e.Name()))
	}
}

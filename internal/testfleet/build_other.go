//go:build !linux

package testfleet

import "os"

// sharedBuild returns a folder of this test binary's own: elsewhere than on
// Linux, each test binary builds Caddy for itself.
func sharedBuild() (dir string, unlock func(), err error) {
	dir, err = os.MkdirTemp("", "apikey-caddy-")
	return dir, func() {}, err
}

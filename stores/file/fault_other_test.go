//go:build !unix

package file

const canLimitFileSize = false

func runFullDiskChild(string) {}

func runStateFullDiskChild(string) {}

//go:build !unix

package apikey

const canLimitFileSize = false

func runFullDiskChild(string) {}

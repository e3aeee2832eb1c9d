// Package safefile is how this repository's key files, and the files kept
// beside them under their lock, are read and written safely: the lock file
// (made new, never through a link, a planted one refused), reads that a
// FIFO or a device put in a file's place cannot hang, appends to a log
// beside the key file, and the atomic, durable replace of a file in a
// folder opened once (an os.Root). What a key file holds is package
// keyfile's; this package knows files only.
//
// It is internal: third parties build on keyfile and stores, not on these
// steps.
package safefile

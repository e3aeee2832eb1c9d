// Package keyops holds the key operations that the `caddy apikey` commands
// and the admin API share: create, list, revoke and rotate a key, set its
// rate limits and quota, grant it units (GrantQuota) and read its usage
// counts (ReadUsage), and import or export a key set, on any store's
// records (a stores.RecordStore).
// The front ends parse their input and show the results; the rules (an id
// that names one key, a grace that never lengthens a key's life, an import
// that never overwrites) live here once.
package keyops

import (
	"encoding/json"
	"strings"
	"unicode"
)

// ErrorBody is the JSON body of a refusal, the handler's and the admin
// API's: {"success": false, "error": {"code": ..., "message": ...}}.
func ErrorBody(code, message string) []byte {
	var envelope struct {
		Success bool `json:"success"`
		Error   struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	envelope.Error.Code, envelope.Error.Message = code, message
	body, _ := json.Marshal(envelope) // cannot fail: strings only
	return body
}

// Printable keeps a table cell on its line and in its column: a label with a
// tab or a newline (or a terminal escape) must not forge other rows. It
// also shows as '?' the invisible format characters (Unicode's Cf: the
// bidirectional overrides, embeddings and isolates U+202A-U+202E and
// U+2066-U+2069, the marks U+200E, U+200F and U+061C, the zero-width
// characters, U+FEFF) and the line and paragraph separators, which can
// make a label read as another one or reorder the cells after it.
func Printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp) {
			return '?'
		}
		return r
	}, s)
}

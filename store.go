package apikey

import (
	"crypto/sha256"

	"github.com/caddy-apikey/caddy-apikey/keyset"
	filestore "github.com/caddy-apikey/caddy-apikey/stores/file"
	redisstore "github.com/caddy-apikey/caddy-apikey/stores/redis"
)

// Store is a key store: where the handler finds the key set in force and
// notes the uses of keys. Stores are Caddy modules in the
// http.handlers.apikey.stores namespace (http.handlers.apikey.stores.file,
// http.handlers.apikey.stores.redis, or one of another plugin's), so that
// another backend plugs in without touching the handler. Both methods are
// on the request path: they must not do I/O or block.
//
// A store may also opt in to the admin API, the `caddy apikey` commands and
// the metrics through the stores package.
type Store interface {
	// KeySet returns the key set in force. Build one with keyset.New or a
	// keyset.Builder.
	KeySet() *keyset.KeySet
	// MarkUsed notes that key k, whose SHA-256 is sum, admitted a request
	// at now (unix nanoseconds).
	MarkUsed(k *keyset.Key, sum [sha256.Size]byte, now int64)
}

// The stores of this repository, as the handler serves them.
var (
	_ Store = (*filestore.Store)(nil)
	_ Store = (*redisstore.Store)(nil)
)

// The Redis store shares rate-limit counts with the fleet.
var _ LimiterSharer = (*redisstore.Store)(nil)

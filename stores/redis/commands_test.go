package redis_test

// The HA tests run `caddy apikey` on Sentinel and Cluster URLs in this
// process (testkeys.RunCommand), as an operator does: the commands are
// registered by the cli package, which imports this one, so only a test
// of the package's outside may import it.
import _ "github.com/caddy-apikey/caddy-apikey/cli"

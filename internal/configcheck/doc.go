// Package configcheck holds the checks an apikey handler runs on its
// server's config when it is provisioned, each of which finds a config that
// loads but cannot work as written, and warns about it: a header the server
// drops before the handler sees it (WarnDroppedHeaders), and a handler that
// answers every request before an apikey handler in the same route can run
// (WarnShadowedAuth). They read the server's config and log; they never
// refuse a config, nor touch the request path.
package configcheck

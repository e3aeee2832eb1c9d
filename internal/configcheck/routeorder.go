package configcheck

import (
	"encoding/json"
	"fmt"
	"sync"
	"weak"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Caddy runs the handlers of a route list in the order written when the
// Caddyfile says so (a route block, the order option) or the JSON lists
// them so. A handler that answers every request it gets, placed before an
// apikey handler, answers them before any key is checked:
//
//	route {
//		respond "secret"
//		apikey keys.json   # never runs
//	}
//
// The first apikey handler of a server to be provisioned looks for that in
// the server's routes and warns about each case it finds.
//
// What it can see: the http app provisions a server's routes one by one, in
// order, each route's handlers in order, a subroute's routes within its
// handler. When a handler is provisioned, the routes before its top-level
// route are provisioned (their Handlers typed, HandlersRaw cleared) and the
// others, its own included, still hold their HandlersRaw: Caddy's
// Context.LoadModule clears a raw field only once it has loaded all of it.
// So the whole of srv.Routes is there to read, part typed, part JSON. The
// first apikey handler of a server sits in the first top-level route that
// holds one, so every apikey handler of srv.Routes is still JSON then.
//
// What it reports is sound: a handler it names does answer every request
// that reaches it (static_response without abort, file_server without
// pass_thru, reverse_proxy, metrics, acme_server, or a subroute with such a
// handler in a route without matchers), and no handler after it in that list
// runs, the apikey handler included. It is not complete: it knows no
// handler of other plugins, reads no matcher (one that matches every
// request still counts as "may not match"), and leaves out the server's
// error routes, named routes and routes inside other handlers (e.g.
// reverse_proxy's handle_response).

// answeringHandlers are the standard handlers that answer every request
// they get, without calling the next handler.
var answeringHandlers = map[string]bool{
	"static_response": true, // unless abort
	"file_server":     true, // unless pass_thru
	"reverse_proxy":   true,
	"metrics":         true,
	"acme_server":     true,
}

// routeNode and handlerNode are what the check reads of a route and of a
// handler, from JSON or from a provisioned one.
type routeNode struct {
	matched  bool // it has matchers, so it may not run
	terminal bool // no route after it runs
	handlers []handlerNode
}

type handlerNode struct {
	name    string      // the module's name, e.g. "static_response"
	answers bool        // it answers every request it gets
	routes  []routeNode // a subroute's routes
}

// rawRoute and rawHandler are the members of a route's and a handler's
// JSON that the check reads.
type rawRoute struct {
	Match    []json.RawMessage `json:"match"`
	Handle   []json.RawMessage `json:"handle"`
	Terminal bool              `json:"terminal"`
}

type rawHandler struct {
	Handler  string     `json:"handler"`
	Routes   []rawRoute `json:"routes"`
	Abort    bool       `json:"abort"`
	PassThru bool       `json:"pass_thru"`
}

func (rh rawHandler) node() handlerNode {
	n := handlerNode{name: rh.Handler}
	switch rh.Handler {
	case "subroute":
		n.routes = rawRoutes(rh.Routes)
	case "static_response":
		n.answers = !rh.Abort
	case "file_server":
		n.answers = !rh.PassThru
	default:
		n.answers = answeringHandlers[rh.Handler]
	}
	return n
}

func rawRoutes(routes []rawRoute) []routeNode {
	out := make([]routeNode, len(routes))
	for i, r := range routes {
		out[i] = routeNode{matched: len(r.Match) > 0, terminal: r.Terminal, handlers: rawHandlers(r.Handle)}
	}
	return out
}

func rawHandlers(raw []json.RawMessage) []handlerNode {
	out := make([]handlerNode, 0, len(raw))
	for _, msg := range raw {
		var rh rawHandler
		if err := json.Unmarshal(msg, &rh); err != nil {
			// Caddy refuses it when it gets there; nothing to say.
			rh = rawHandler{Handler: "?"}
		}
		out = append(out, rh.node())
	}
	return out
}

// routeNodes reads a route list that may be partly provisioned.
func routeNodes(routes caddyhttp.RouteList) []routeNode {
	out := make([]routeNode, len(routes))
	for i, r := range routes {
		n := routeNode{matched: len(r.MatcherSets) > 0 || len(r.MatcherSetsRaw) > 0, terminal: r.Terminal}
		if r.Handlers != nil {
			for _, h := range r.Handlers {
				n.handlers = append(n.handlers, typedHandler(h))
			}
		} else {
			n.handlers = rawHandlers(r.HandlersRaw)
		}
		out[i] = n
	}
	return out
}

// typedHandler reads a provisioned handler.
func typedHandler(h caddyhttp.MiddlewareHandler) handlerNode {
	mod, ok := h.(caddy.Module)
	if !ok {
		return handlerNode{name: fmt.Sprintf("%T", h)}
	}
	name := caddy.GetModuleName(mod)
	switch v := h.(type) {
	case *caddyhttp.Subroute:
		return handlerNode{name: name, routes: routeNodes(v.Routes)}
	case *caddyhttp.StaticResponse:
		return handlerNode{name: name, answers: !v.Abort}
	}
	if name == "file_server" {
		// Read pass_thru from its JSON, not to import the module.
		var rh rawHandler
		if b, err := json.Marshal(h); err == nil && json.Unmarshal(b, &rh) == nil {
			return handlerNode{name: name, answers: !rh.PassThru}
		}
		return handlerNode{name: name}
	}
	return handlerNode{name: name, answers: answeringHandlers[name]}
}

// ShadowedAuth is an apikey handler that never runs because a handler
// before it answers first.
type ShadowedAuth struct {
	Answerer   string // the answering handler's module name
	AnswererAt string // where it is, e.g. "routes[0] handle[0] routes[1] handle[0]"
	ApikeyAt   string // where the first apikey handler after it is
}

// routeChecker walks a server's routes.
type routeChecker struct {
	found []ShadowedAuth
}

// answer is where a route or handler list answers every request that
// reaches it; or, ended, that a terminal route ends the chain there, so
// nothing after it runs and nothing is to be said about it.
type answer struct {
	name, at string
	ended    bool
}

// routes checks a route list and reports whether it answers every request
// that reaches its end. at is the list's position.
func (c *routeChecker) routes(list []routeNode, at string) *answer {
	var first *answer
	for i, r := range list {
		here := join(at, fmt.Sprintf("routes[%d]", i))
		if first != nil {
			for j, h := range r.handlers {
				if where, ok := apikeyIn(h, join(here, fmt.Sprintf("handle[%d]", j))); ok {
					c.found = append(c.found, ShadowedAuth{first.name, first.at, where})
					return first
				}
			}
			continue
		}
		a := c.handlers(r.handlers, here)
		if r.matched {
			continue // it may not run
		}
		switch {
		case a != nil && a.ended:
			return a
		case a != nil:
			first = a
		case r.terminal:
			return &answer{ended: true}
		}
	}
	return first
}

// handlers checks a route's handlers, in the order they run. at is the
// route's position.
func (c *routeChecker) handlers(list []handlerNode, at string) *answer {
	var first *answer
	for j, h := range list {
		here := join(at, fmt.Sprintf("handle[%d]", j))
		if first != nil {
			if where, ok := apikeyIn(h, here); ok {
				c.found = append(c.found, ShadowedAuth{first.name, first.at, where})
				return first
			}
			continue
		}
		switch {
		case h.routes != nil:
			first = c.routes(h.routes, here)
			if first != nil && first.ended {
				return first
			}
		case h.answers:
			first = &answer{name: h.name, at: here}
		}
	}
	return first
}

// apikeyIn tells where the first apikey handler is in h (h itself, or in
// a subroute's routes), h being at position at.
func apikeyIn(h handlerNode, at string) (string, bool) {
	if h.name == "apikey" {
		return at, true
	}
	for i, r := range h.routes {
		for j, hh := range r.handlers {
			if where, ok := apikeyIn(hh, join(at, fmt.Sprintf("routes[%d] handle[%d]", i, j))); ok {
				return where, true
			}
		}
	}
	return "", false
}

func join(at, next string) string {
	if at == "" {
		return next
	}
	return at + " " + next
}

// ShadowedAuths lists, for each handler of srv's routes that answers
// before an apikey handler can run, the first such apikey handler. It
// reads the routes as they are, JSON or provisioned, and logs nothing.
func ShadowedAuths(srv *caddyhttp.Server) []ShadowedAuth {
	var c routeChecker
	c.routes(routeNodes(srv.Routes), "")
	var out []ShadowedAuth
	seen := map[string]bool{}
	for _, s := range c.found {
		if !seen[s.AnswererAt] {
			seen[s.AnswererAt] = true
			out = append(out, s)
		}
	}
	return out
}

// routeOrderChecked is the last server whose routes were checked: each
// server's once per config load, by the first apikey handler provisioned
// in it (Caddy provisions its servers one after the other).
var routeOrderChecked struct {
	sync.Mutex
	srv weak.Pointer[caddyhttp.Server]
}

// WarnShadowedAuth logs a warning for each apikey handler of srv's routes
// that a handler before it keeps from ever running, the first time it is
// called for srv (an apikey handler's Provision calls it with the server
// from its context). srv may be nil (not known): then it says nothing.
func WarnShadowedAuth(logger *zap.Logger, srv *caddyhttp.Server) {
	if srv == nil {
		return
	}
	routeOrderChecked.Lock()
	if routeOrderChecked.srv.Value() == srv {
		routeOrderChecked.Unlock()
		return
	}
	routeOrderChecked.srv = weak.Make(srv)
	routeOrderChecked.Unlock()
	for _, s := range ShadowedAuths(srv) {
		logger.Warn("an apikey handler never runs: a handler before it in the same route answers every request first, with no key checked",
			zap.String("server", srv.Name()),
			zap.String("handler", s.Answerer),
			zap.String("handler_at", s.AnswererAt),
			zap.String("apikey_at", s.ApikeyAt),
			zap.String("fix", "put apikey first in the route block, or take it out of the route block so that Caddy orders it before "+
				s.Answerer+" (see the order option), or give "+s.Answerer+" a matcher or a handle block of its own if it is meant to answer without a key"))
	}
}

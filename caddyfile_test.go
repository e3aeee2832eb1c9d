package apikey

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/keyformat"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	filestore "github.com/caddy-apikey/caddy-apikey/stores/file"
)

// unmarshalDirective parses one apikey directive with UnmarshalCaddyfile.
func unmarshalDirective(t *testing.T, input string) (Handler, error) {
	t.Helper()
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
	return h, err
}

func strPtr(s string) *string { return &s }

func TestCaddyfileUnmarshalGood(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  Handler
	}{
		{"inline key file", `apikey keys.json`, Handler{KeysFile: "keys.json"}},
		{"inline absolute key file", `apikey /etc/caddy/keys.json`, Handler{KeysFile: "/etc/caddy/keys.json"}},
		{"keys_file in block", "apikey {\n\tkeys_file /srv/keys.json\n}", Handler{KeysFile: "/srv/keys.json"}},
		{"header without scheme", "apikey k.json {\n\theader X-Token\n}",
			Handler{KeysFile: "k.json", Headers: []HeaderSource{{Name: "X-Token"}}}},
		{"header with scheme", "apikey k.json {\n\theader Authorization Token\n}",
			Handler{KeysFile: "k.json", Headers: []HeaderSource{{Name: "Authorization", Scheme: "Token"}}}},
		{"repeated header keeps order", "apikey k.json {\n\theader X-B\n\theader Authorization Bearer\n\theader X-A\n}",
			Handler{KeysFile: "k.json", Headers: []HeaderSource{{Name: "X-B"}, {Name: "Authorization", Scheme: "Bearer"}, {Name: "X-A"}}}},
		{"query param", "apikey k.json {\n\tquery token\n}", Handler{KeysFile: "k.json", Query: strPtr("token")}},
		{"query off", "apikey k.json {\n\tquery off\n}", Handler{KeysFile: "k.json", Query: strPtr("")}},
		{"realm", "apikey k.json {\n\trealm \"my api\"\n}", Handler{KeysFile: "k.json", Realm: "my api"}},
		{"scopes, repeated and several per line", "apikey k.json {\n\tscope read\n\tscope write admin\n}",
			Handler{KeysFile: "k.json", Scopes: []string{"read", "write", "admin"}}},
		{"flags", "apikey k.json {\n\toptional\n\thide_credentials\n\thandle_errors\n}",
			Handler{KeysFile: "k.json", Optional: true, HideCredentials: true, HandleErrors: true}},
		{"intervals", "apikey k.json {\n\tusage_interval 1d\n\treload_interval 250ms\n}",
			Handler{KeysFile: "k.json", UsageInterval: caddy.Duration(24 * time.Hour), ReloadInterval: caddy.Duration(250 * time.Millisecond)}},
		{"intervals off", "apikey k.json {\n\tusage_interval off\n\treload_interval off\n}",
			Handler{KeysFile: "k.json", UsageInterval: -1, ReloadInterval: -1}},
		{"empty block", "apikey k.json {\n}", Handler{KeysFile: "k.json"}},
		{"key_format", "apikey k.json {\n\tkey_format acme_live_\n}", Handler{KeysFile: "k.json", KeyFormat: &keyformat.Format{Prefix: "acme_live_"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := unmarshalDirective(t, tt.input)
			if err != nil {
				t.Fatalf("UnmarshalCaddyfile: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestCaddyfileUnmarshalErrors(t *testing.T) {
	tests := []struct {
		name  string
		input string
		line  string // "Testfile:<line>"
		want  string
	}{
		{"unknown subdirective", "apikey k.json {\n\trealm r\n\tbogus 1\n}", "Testfile:3", "bogus"},
		{"missing key file", "apikey {\n\trealm r\n}", "Testfile:", "key file is required"},
		{"missing key file, no block", "apikey", "Testfile:1", "key file is required"},
		{"two inline arguments", "apikey a.json b.json", "Testfile:1", "wrong argument count"},
		{"duplicated key file", "apikey a.json {\n\tkeys_file b.json\n}", "Testfile:2", "already"},
		{"keys_file twice", "apikey {\n\tkeys_file a.json\n\tkeys_file b.json\n}", "Testfile:3", "already"},
		{"keys_file without argument", "apikey {\n\tkeys_file\n}", "Testfile:2", "wrong argument count"},
		{"keys_file with two arguments", "apikey {\n\tkeys_file a b\n}", "Testfile:2", "wrong argument count"},
		{"header without argument", "apikey k.json {\n\theader\n}", "Testfile:2", "wrong argument count"},
		{"header with three arguments", "apikey k.json {\n\theader Authorization Bearer extra\n}", "Testfile:2", "wrong argument count"},
		{"query without argument", "apikey k.json {\n\tquery\n}", "Testfile:2", "wrong argument count"},
		{"query with two arguments", "apikey k.json {\n\tquery a b\n}", "Testfile:2", "wrong argument count"},
		{"query twice", "apikey k.json {\n\tquery a\n\tquery b\n}", "Testfile:3", "already"},
		{"realm without argument", "apikey k.json {\n\trealm\n}", "Testfile:2", "wrong argument count"},
		{"realm with two arguments", "apikey k.json {\n\trealm a b\n}", "Testfile:2", "wrong argument count"},
		{"realm twice", "apikey k.json {\n\trealm a\n\trealm b\n}", "Testfile:3", "already"},
		{"scope without argument", "apikey k.json {\n\tscope\n}", "Testfile:2", "wrong argument count"},
		{"optional with argument", "apikey k.json {\n\toptional yes\n}", "Testfile:2", "wrong argument count"},
		{"hide_credentials with argument", "apikey k.json {\n\thide_credentials true\n}", "Testfile:2", "wrong argument count"},
		{"handle_errors with argument", "apikey k.json {\n\thandle_errors on\n}", "Testfile:2", "wrong argument count"},
		{"usage_interval without argument", "apikey k.json {\n\tusage_interval\n}", "Testfile:2", "wrong argument count"},
		{"usage_interval with two arguments", "apikey k.json {\n\tusage_interval 1m 2m\n}", "Testfile:2", "wrong argument count"},
		{"usage_interval not a duration", "apikey k.json {\n\tusage_interval soon\n}", "Testfile:2", "usage_interval"},
		{"usage_interval zero", "apikey k.json {\n\tusage_interval 0s\n}", "Testfile:2", "positive"},
		{"usage_interval negative", "apikey k.json {\n\tusage_interval -5m\n}", "Testfile:2", "positive"},
		{"reload_interval not a duration", "apikey k.json {\n\treload_interval 5 minutes\n}", "Testfile:2", "wrong argument count"},
		{"reload_interval zero", "apikey k.json {\n\treload_interval 0\n}", "Testfile:2", "reload_interval"},
		{"reload_interval too short", "apikey k.json {\n\treload_interval 1ns\n}", "Testfile:2", "too short"},
		{"reload_interval no argument", "apikey k.json {\n\treload_interval\n}", "Testfile:2", "wrong argument count"},
		{"key_format without argument", "apikey k.json {\n\tkey_format\n}", "Testfile:2", "key_format takes one argument"},
		{"key_format with two arguments", "apikey k.json {\n\tkey_format acme_ live_\n}", "Testfile:2", "key_format takes one argument"},
		{"key_format twice", "apikey k.json {\n\tkey_format acme_\n\tkey_format other_\n}", "Testfile:3", "key_format already given"},
		{"key_format without _", "apikey k.json {\n\tkey_format acme\n}", "Testfile:2", `"acme" must end with _`},
		{"key_format with a dash", "apikey k.json {\n\tkey_format acme-live_\n}", "Testfile:2", `holds '-'`},
		{"key_format of the default format", "apikey k.json {\n\tkey_format sk_live_\n}", "Testfile:2", "default format"},
		{"key_format too long", "apikey k.json {\n\tkey_format " + strings.Repeat("a", 40) + "_\n}", "Testfile:2", "3 to 32"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := unmarshalDirective(t, tt.input)
			if err == nil {
				t.Fatalf("UnmarshalCaddyfile accepted:\n%s", tt.input)
			}
			wantContains(t, err.Error(), tt.line, tt.want)
		})
	}
}

// adaptCaddyfile adapts a whole Caddyfile to JSON with the caddyfile
// adapter, as `caddy adapt` does.
func adaptCaddyfile(t *testing.T, input string) (map[string]any, error) {
	t.Helper()
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		return nil, err
	}
	var cfg map[string]any
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatalf("adapted config is not JSON: %v\n%s", err, out)
	}
	return cfg, nil
}

// handlerRoute is a route of the adapted config that holds an apikey
// handler: the route's matchers and the handler's JSON.
type handlerRoute struct {
	Match   any
	Handler map[string]any
}

// apikeyRoutes finds every route with an apikey handler in an adapted
// config, in the order they run.
func apikeyRoutes(cfg any) []handlerRoute {
	var found []handlerRoute
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if routes, ok := v["routes"].([]any); ok {
				for _, r := range routes {
					route, _ := r.(map[string]any)
					handle, _ := route["handle"].([]any)
					for _, h := range handle {
						if hm, _ := h.(map[string]any); hm["handler"] == "apikey" {
							found = append(found, handlerRoute{Match: route["match"], Handler: hm})
						}
					}
				}
			}
			for k, child := range v {
				if k != "routes" {
					walk(child)
				}
			}
			if routes, ok := v["routes"].([]any); ok {
				for _, r := range routes {
					walk(r)
				}
			}
		case []any:
			for _, child := range v {
				walk(child)
			}
		}
	}
	walk(cfg)
	return found
}

// handlerOrder lists the handler names of a site's subroute, in order.
func handlerOrder(t *testing.T, cfg map[string]any) []string {
	t.Helper()
	var names []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if name, ok := v["handler"].(string); ok && name != "subroute" {
				names = append(names, name)
			}
			if h, ok := v["handle"]; ok {
				walk(h)
			}
			if r, ok := v["routes"]; ok {
				walk(r)
			}
		case []any:
			for _, c := range v {
				walk(c)
			}
		}
	}
	servers := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)
	for _, srv := range servers {
		walk(srv.(map[string]any)["routes"])
	}
	return names
}

func site(body string) string {
	return "http://localhost:8080 {\n" + body + "\n}\n"
}

func TestCaddyfileAdaptHandlerJSON(t *testing.T) {
	cfg, err := adaptCaddyfile(t, site(`apikey /api/* {
	keys_file /etc/keys.json
	header X-Token
	header Authorization Bearer
	query off
	realm "the api"
	scope read
	optional
	hide_credentials
	handle_errors
	usage_interval 30m
	reload_interval off
}
respond ok`))
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	routes := apikeyRoutes(cfg)
	if len(routes) != 1 {
		t.Fatalf("found %d apikey handlers, want 1", len(routes))
	}
	got, _ := json.Marshal(routes[0].Handler)
	want := `{"handle_errors":true,"handler":"apikey","headers":[{"name":"X-Token"},{"name":"Authorization","scheme":"Bearer"}],` +
		`"hide_credentials":true,"keys_file":"/etc/keys.json","optional":true,"query":"","realm":"the api",` +
		`"reload_interval":-1,"scopes":["read"],"usage_interval":1800000000000}`
	if string(got) != want {
		t.Errorf("handler JSON\n got %s\nwant %s", got, want)
	}

	// Defaults are left out of the JSON: no query member means api_key.
	cfg, err = adaptCaddyfile(t, site("apikey keys.json\nrespond ok"))
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	got, _ = json.Marshal(apikeyRoutes(cfg)[0].Handler)
	if string(got) != `{"handler":"apikey","keys_file":"keys.json"}` {
		t.Errorf("default handler JSON = %s", got)
	}
}

func TestCaddyfileRedis(t *testing.T) {
	cfg, err := adaptCaddyfile(t, site(`apikey /api/* {
	redis redis://:{env.REDIS_PASSWORD}@10.0.0.5:6379/2 {
		prefix     prod:
		cache_file /var/lib/caddy/apikey-cache.json
	}
	scope read
	usage_interval 30m
}
respond ok`))
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	routes := apikeyRoutes(cfg)
	if len(routes) != 1 {
		t.Fatalf("found %d apikey handlers, want 1", len(routes))
	}
	got, _ := json.Marshal(routes[0].Handler)
	want := `{"handler":"apikey","scopes":["read"],"store":{"backend":"redis","cache_file":"/var/lib/caddy/apikey-cache.json",` +
		`"prefix":"prod:","url":"redis://:{env.REDIS_PASSWORD}@10.0.0.5:6379/2","usage_interval":1800000000000}}`
	if string(got) != want {
		t.Errorf("handler JSON\n got %s\nwant %s", got, want)
	}
	if m, _ := json.Marshal(routes[0].Match); string(m) != `[{"path":["/api/*"]}]` {
		t.Errorf("match = %s: a lone argument with a redis block is a matcher", m)
	}

	for _, tt := range []struct {
		name, body string
		want       []string
	}{
		{"redis and a key file", "apikey k.json {\n\tredis redis://h\n}", []string{"Caddyfile:", "not both"}},
		{"redis and reload_interval", "apikey {\n\tredis redis://h\n\treload_interval 1s\n}", []string{"Caddyfile:", "reload_interval"}},
		{"redis without URL", "apikey {\n\tredis\n}", []string{"Caddyfile:3", "wrong argument count"}},
		{"redis with two URLs", "apikey {\n\tredis redis://a redis://b\n}", []string{"Caddyfile:3", "wrong argument count"}},
		{"redis twice", "apikey {\n\tredis redis://a\n\tredis redis://b\n}", []string{"Caddyfile:4", "already"}},
		{"unknown redis option", "apikey {\n\tredis redis://a {\n\t\tdb 2\n\t}\n}", []string{"Caddyfile:4", "db"}},
		{"prefix without argument", "apikey {\n\tredis redis://a {\n\t\tprefix\n\t}\n}", []string{"Caddyfile:4", "wrong argument count"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := adaptCaddyfile(t, site(tt.body))
			if err == nil {
				t.Fatalf("adapt accepted:\n%s", tt.body)
			}
			wantContains(t, err.Error(), tt.want...)
		})
	}
}

func TestCaddyfileDirectiveOrder(t *testing.T) {
	// Written after respond, reverse_proxy and basic_auth, apikey still
	// runs first: it is ordered before basic_auth.
	cfg, err := adaptCaddyfile(t, site(`respond /hello "hi"
reverse_proxy /up/* localhost:9
basic_auth /admin/* {
	bob $2a$14$Zkx19XLiW6VYouLHR5NmfOFU0z2GTNmpkT/5qqR7hx4IjWJPDhjvG
}
header X-Seen yes
apikey keys.json`))
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	order := handlerOrder(t, cfg)
	idx := map[string]int{}
	for i, n := range order {
		if _, ok := idx[n]; !ok {
			idx[n] = i
		}
	}
	for _, other := range []string{"authentication", "static_response", "reverse_proxy"} {
		if _, ok := idx[other]; !ok {
			t.Fatalf("handler %s not in %v", other, order)
		}
		if idx["apikey"] > idx[other] {
			t.Errorf("apikey runs after %s: %v", other, order)
		}
	}
}

func TestCaddyfileAdaptErrors(t *testing.T) {
	tests := []struct {
		name string
		body string
		want []string
	}{
		// The site body starts on line 2 of the Caddyfile.
		{"unknown subdirective", "apikey k.json {\n\tnope\n}", []string{"Caddyfile:3", "nope"}},
		{"missing key file", "apikey", []string{"Caddyfile:2", "key file is required"}},
		{"wildcard without key file", "apikey *", []string{"Caddyfile:", "key file is required"}},
		{"named matcher without key file", "@m path /x\napikey @m", []string{"Caddyfile:", "key file is required"}},
		{"too many arguments", "apikey /api/* k.json extra", []string{"Caddyfile:2", "too many arguments", "apikey [<matcher>] [<keys_file>]"}},
		{"two arguments, first no matcher", "apikey a.json b.json", []string{"Caddyfile:2", "a.json is not a matcher"}},
		{"matcher, inline file and keys_file", "apikey /api/* a.json {\n\tkeys_file b.json\n}", []string{"Caddyfile:3", "already"}},
		{"header, too many arguments", "apikey k.json {\n\n\theader A B C\n}", []string{"Caddyfile:4", "wrong argument count"}},
		{"bad key_format", "apikey k.json {\n\trealm r\n\tkey_format 9lives_\n}", []string{"Caddyfile:4", `key format prefix "9lives_" must start with a letter`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := adaptCaddyfile(t, site(tt.body))
			if err == nil {
				t.Fatalf("adapt accepted:\n%s", tt.body)
			}
			msg := err.Error()
			wantContains(t, msg, tt.want...)
			if strings.Contains(tt.want[0], ":") && !strings.Contains(msg, "Caddyfile:") {
				t.Errorf("error %q names no file and line", msg)
			}
		})
	}
}

// The store is a guest module in JSON; keys_file is its shorthand.
func TestJSONStoreModule(t *testing.T) {
	k := testkeys.New("json", nil)
	path := testkeys.WriteKeys(t, "", k)
	provision := func(raw string) (*Handler, error) {
		var h Handler
		if err := json.Unmarshal([]byte(raw), &h); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		t.Cleanup(cancel)
		return &h, h.Provision(ctx)
	}
	pathJSON, _ := json.Marshal(path)

	h, err := provision(`{"store": {"backend": "file", "path": ` + string(pathJSON) + `, "reload_interval": -1}}`)
	if err != nil {
		t.Fatalf("file store module: %v", err)
	}
	if _, ok := h.store.(*filestore.Store); !ok {
		t.Fatalf("store is %T, want *filestore.Store", h.store)
	}
	if got, _ := h.store.KeySet().Lookup(k.Raw); got == nil {
		t.Fatal("the key of the file store's file is not in force")
	}

	for _, tt := range []struct{ name, raw, want string }{
		{"neither", `{}`, "a key store is required"},
		{"both", `{"keys_file": ` + string(pathJSON) + `, "store": {"backend": "file", "path": "x"}}`, "both given"},
		{"intervals beside a store", `{"usage_interval": 60000000000, "store": {"backend": "file", "path": ` + string(pathJSON) + `}}`, "go in the store module"},
		{"unknown backend", `{"store": {"backend": "etcd"}}`, "etcd"},
		{"file store without path", `{"store": {"backend": "file"}}`, "path"},
		{"redis store without URL", `{"store": {"backend": "redis"}}`, "URL is required"},
		{"redis store, bad prefix", `{"store": {"backend": "redis", "url": "redis://127.0.0.1:1", "prefix": "a{b"}}`, "hash tag"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := provision(tt.raw)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want one saying %q", err, tt.want)
			}
		})
	}
}

// TestCaddyfileArgumentReadings lists the ways the directive's arguments
// can be read, through Caddy's adapter: each input either adapts into the
// route it says (its matcher and its store), or is refused with an error
// naming file and line that says what was understood and what to write. No
// input may adapt into a matcher that was meant as a key file.
func TestCaddyfileArgumentReadings(t *testing.T) {
	const redisBlock = " {\n\tredis redis://127.0.0.1:6379\n}"
	tests := []struct {
		name string
		body string
		// What it adapts into: the key file, or "redis"; and the
		// route's match as JSON ("" for none).
		store, match string
		// Or the parts of its error.
		err []string
	}{
		// A lone argument.
		{name: "relative key file", body: "apikey keys.json", store: "keys.json"},
		{name: "absolute key file", body: "apikey /etc/caddy/keys.json", store: "/etc/caddy/keys.json"},
		{name: "absolute key file, block without a store", body: "apikey /etc/caddy/keys.json {\n\trealm r\n}", store: "/etc/caddy/keys.json"},
		{name: "absolute key file, argument named keys_file", body: "apikey /etc/keys.json {\n\theader keys_file\n}", store: "/etc/keys.json"},
		{name: "placeholder key file", body: "apikey {env.KEYS_FILE}", store: "{env.KEYS_FILE}"},
		{name: "path pattern, redis in the block", body: "apikey /api/*" + redisBlock, store: "redis", match: `[{"path":["/api/*"]}]`},
		{name: "path pattern, keys_file in the block", body: "apikey /api/* {\n\tkeys_file /etc/keys.json\n}", store: "/etc/keys.json", match: `[{"path":["/api/*"]}]`},
		{name: "wildcard, redis in the block", body: "apikey *" + redisBlock, store: "redis"},
		{name: "named matcher, redis in the block", body: "@api path /api/*\napikey @api" + redisBlock, store: "redis", match: `[{"path":["/api/*"]}]`},
		{name: "no argument, redis in the block", body: "apikey" + redisBlock, store: "redis"},
		{name: "no argument, keys_file in the block", body: "apikey {\n\tkeys_file k.json\n}", store: "k.json"},
		{name: "named matcher, keys_file in the block", body: "@api path /api/*\napikey @api {\n\tkeys_file k.json\n}", store: "k.json", match: `[{"path":["/api/*"]}]`},
		// The trap: a site moving from a key file to Redis.
		{name: "absolute key file and redis", body: "apikey /etc/caddy/keys.json" + redisBlock,
			err: []string{"Caddyfile:2", "/etc/caddy/keys.json could be a key file or a path matcher", "every other path", "apikey { redis", "@guarded path /etc/caddy/keys.json"}},
		{name: "absolute key file and keys_file", body: "apikey /etc/caddy/keys.json {\n\tkeys_file /srv/keys.json\n}",
			err: []string{"Caddyfile:2", "could be a key file or a path matcher", "apikey { keys_file"}},
		{name: "exact path and redis", body: "apikey /metrics" + redisBlock,
			err: []string{"Caddyfile:2", "could be a key file or a path matcher", "@guarded path /metrics"}},
		{name: "relative key file and redis", body: "apikey keys.json" + redisBlock,
			err: []string{"Caddyfile:3", "not both", "the key file keys.json (the directive's argument", "apikey /api/* { redis"}},
		{name: "path pattern without a store", body: "apikey /api/*",
			err: []string{"Caddyfile:2", "/api/* is a path matcher and there is no key store", "apikey /api/* <keys_file>"}},
		{name: "directory without a store", body: "apikey /api/",
			err: []string{"Caddyfile:2", "/api/ ends in /, so it is not a key file", "/api/*"}},
		{name: "directory matcher and redis", body: "apikey /api/" + redisBlock,
			err: []string{"Caddyfile:2", "matches the path /api/ alone", "write /api/* to guard everything under it", "@guarded path /api/"}},
		{name: "root matcher and redis", body: "apikey /" + redisBlock,
			err: []string{"Caddyfile:2", "matches the path / alone", "give no matcher"}},
		{name: "glob key file", body: "apikey *.json", err: []string{"Caddyfile:2", "*.json is not a matcher", "holds no *"}},
		{name: "pattern without its slash", body: "apikey api/*" + redisBlock, err: []string{"Caddyfile:2", "api/* is not a matcher (a path matcher starts with /)"}},
		{name: "glob keys_file", body: "apikey {\n\tkeys_file /srv/*.json\n}", err: []string{"Caddyfile:3", "holds no *"}},

		// Two arguments: a matcher, then the key file.
		{name: "wildcard and key file", body: "apikey * keys.json", store: "keys.json"},
		{name: "path pattern and key file", body: "apikey /api/* /etc/keys.json", store: "/etc/keys.json", match: `[{"path":["/api/*"]}]`},
		{name: "prefix pattern and key file", body: "apikey /api* keys.json", store: "keys.json", match: `[{"path":["/api*"]}]`},
		{name: "exact path and key file", body: "apikey /admin /etc/keys.json", store: "/etc/keys.json", match: `[{"path":["/admin"]}]`},
		{name: "named matcher and key file", body: "@api path /api/*\napikey @api keys.json", store: "keys.json", match: `[{"path":["/api/*"]}]`},
		{name: "key file, then pattern", body: "apikey keys.json /api/*",
			err: []string{"Caddyfile:2", "the matcher goes first: apikey /api/* keys.json"}},
		{name: "absolute key file, then pattern", body: "apikey /etc/keys.json /api/*",
			err: []string{"Caddyfile:2", "the matcher goes first: apikey /api/* /etc/keys.json"}},
		{name: "key file, then named matcher", body: "@api path /api/*\napikey keys.json @api",
			err: []string{"Caddyfile:3", "the matcher goes first: apikey @api keys.json"}},
		{name: "key file, then wildcard", body: "apikey keys.json *",
			err: []string{"Caddyfile:2", "the matcher goes first: apikey * keys.json"}},
		{name: "two key files", body: "apikey a.json b.json", err: []string{"Caddyfile:2", "a.json is not a matcher", "apikey [<matcher>] <keys_file>"}},
		{name: "two matchers", body: "apikey /api/* /v2/*", err: []string{"Caddyfile:2", "two matchers"}},
		{name: "directory matcher and key file", body: "apikey /api/ keys.json", err: []string{"Caddyfile:2", "matches the path /api/ alone", "/api/*"}},
		{name: "root matcher and key file", body: "apikey / keys.json", err: []string{"Caddyfile:2", "matches the path / alone"}},
		{name: "matcher and glob key file", body: "apikey /api/* keys*.json", err: []string{"Caddyfile:2", "holds no *"}},
		{name: "matcher, key file and redis", body: "apikey /api/* keys.json" + redisBlock, err: []string{"Caddyfile:3", "not both"}},
		{name: "three arguments", body: "apikey /api/* keys.json extra", err: []string{"Caddyfile:2", "too many arguments"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := adaptCaddyfile(t, site(tt.body+"\nrespond ok"))
			if tt.err != nil {
				if err == nil {
					routes := apikeyRoutes(cfg)
					t.Fatalf("adapted:\n%s\ninto %+v", tt.body, routes)
				}
				wantContains(t, err.Error(), tt.err...)
				return
			}
			if err != nil {
				t.Fatalf("adapt: %v", err)
			}
			routes := apikeyRoutes(cfg)
			if len(routes) != 1 {
				t.Fatalf("found %d apikey handlers, want 1", len(routes))
			}
			r := routes[0]
			store := r.Handler["keys_file"]
			if s, ok := r.Handler["store"].(map[string]any); ok {
				store = s["backend"]
			}
			if store != tt.store {
				t.Errorf("store %v, want %q (handler %v)", store, tt.store, r.Handler)
			}
			gotMatch := ""
			if r.Match != nil {
				b, _ := json.Marshal(r.Match)
				gotMatch = string(b)
			}
			if gotMatch != tt.match {
				t.Errorf("match = %s, want %q", gotMatch, tt.match)
			}
		})
	}
}

// A typo in a subdirective or a redis option gets the name it is likely a
// typo of; an option of one block written in the other is told where it
// goes; a Redis URL without its scheme is refused when the Caddyfile is
// read, saying which schemes there are.
func TestCaddyfileTypos(t *testing.T) {
	for _, tt := range []struct {
		name, input string
		want        []string
	}{
		{"scopes", "apikey k.json {\n\tscopes read\n}", []string{"Testfile:2", "unrecognized subdirective 'scopes'; did you mean 'scope'?"}},
		{"hyphen for underscore", "apikey k.json {\n\thide-credentials\n}", []string{"Testfile:2", "did you mean 'hide_credentials'?"}},
		{"another case", "apikey k.json {\n\tRealm r\n}", []string{"Testfile:2", "did you mean 'realm'?"}},
		{"a name cut short", "apikey k.json {\n\treload 1s\n}", []string{"Testfile:2", "did you mean 'reload_interval'?"}},
		{"keyfile", "apikey {\n\tkeyfile k.json\n}", []string{"Testfile:2", "did you mean 'keys_file'?"}},
		{"nothing close", "apikey k.json {\n\tbogus 1\n}", []string{"Testfile:2", "unrecognized subdirective 'bogus'", "known: keys_file, redis"}},
		{"redis option in the handler's block", "apikey k.json {\n\tprefix p:\n}", []string{"Testfile:2", "'prefix' is an option of the redis block: redis <url> { prefix"}},
		{"redis option typo", "apikey {\n\tredis redis://h {\n\t\tprefx p:\n\t}\n}", []string{"Testfile:3", "unrecognized redis option 'prefx'; did you mean 'prefix'?"}},
		{"cache", "apikey {\n\tredis redis://h {\n\t\tcache /c.json\n\t}\n}", []string{"Testfile:3", "did you mean 'cache_file'?"}},
		{"handler subdirective in the redis block", "apikey {\n\tredis redis://h {\n\t\tscope read\n\t}\n}", []string{"Testfile:3", "'scope' goes in apikey's block, not in the redis block"}},
		{"redis URL without a scheme", "apikey {\n\tredis 127.0.0.1:6379\n}", []string{"Testfile:2", "must start with redis:// or rediss://", "redis redis://127.0.0.1:6379"}},
		{"redis host and port", "apikey {\n\tredis localhost:6379\n}", []string{"Testfile:2", "must start with redis:// or rediss://", "redis redis://localhost:6379"}},
		{"redis URL of another scheme", "apikey {\n\tredis http://h:6379\n}", []string{"Testfile:2", "must start with redis:// or rediss://", "not http://"}},
		{"redis socket path", "apikey {\n\tredis /run/redis.sock\n}", []string{"Testfile:2", "unix:///run/redis.sock"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := unmarshalDirective(t, tt.input)
			if err == nil {
				t.Fatalf("UnmarshalCaddyfile accepted:\n%s", tt.input)
			}
			wantContains(t, err.Error(), tt.want...)
		})
	}

	// A URL that may hold a password is not echoed.
	_, err := unmarshalDirective(t, "apikey {\n\tredis :s3cr3t@127.0.0.1:6379\n}")
	if err == nil || !strings.Contains(err.Error(), "must start with redis://") || strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("error %v: want the scheme named and the password not shown", err)
	}

	// What the client takes, and placeholders (checked when provisioned).
	for _, u := range []string{"redis://h", "rediss://h:6380/1", "REDIS://h", "unix:///run/redis.sock", "valkey://h", "{env.REDIS_URL}", "redis://:{env.PW}@h"} {
		h, err := unmarshalDirective(t, "apikey {\n\tredis "+u+"\n}")
		if err != nil || h.StoreRaw == nil {
			t.Errorf("redis %s: %v", u, err)
		}
	}
}

// `store <name>` names any store module, which reads its own line and
// block; `store file` and `store redis` give what the shorthands give.
func TestCaddyfileStoreSubdirective(t *testing.T) {
	parse := func(t *testing.T, input string) (*Handler, error) {
		t.Helper()
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
		return &h, err
	}
	for _, tc := range []struct{ name, long, short string }{
		{"file", "apikey {\n\tstore file /k.json {\n\t\treload_interval off\n\t}\n}", ""},
		{"redis", "apikey {\n\tstore redis redis://h:6379 {\n\t\tprefix p:\n\t\tusage_interval 1m\n\t}\n}", "apikey {\n\tredis redis://h:6379 {\n\t\tprefix p:\n\t}\n\tusage_interval 1m\n}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := parse(t, tc.long)
			if err != nil {
				t.Fatal(err)
			}
			if got := string(h.StoreRaw); !strings.Contains(got, `"backend":"`+tc.name+`"`) {
				t.Fatalf("store %s: %s", tc.name, got)
			}
			if tc.short != "" {
				s, err := parse(t, tc.short)
				if err != nil {
					t.Fatal(err)
				}
				if string(s.StoreRaw) != string(h.StoreRaw) {
					t.Errorf("the long form gives %s, the shorthand %s", h.StoreRaw, s.StoreRaw)
				}
			}
		})
	}
	for _, tc := range []struct{ name, input, want string }{
		{"unknown store", "apikey {\n\tstore nosuch x\n}", "http.handlers.apikey.stores.nosuch"},
		{"two stores", "apikey {\n\tstore file /a.json\n\tredis redis://h\n}", "a key store is already given"},
		{"store and a key file", "apikey /k.json {\n\tstore file /a.json\n}", "a key store is already given"},
		{"interval beside a store", "apikey {\n\tstore file /a.json\n\treload_interval 1s\n}", "go in the store's block"},
		{"file store without a path", "apikey {\n\tstore file\n}", "path is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parse(t, tc.input); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}

package apikey

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/caddy-apikey/caddy-apikey/internal/configcheck"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// The documentation's configs are checked against the code: every fenced
// block of README.md and docs/*.md whose language is caddyfile (or caddy)
// or json is a complete config that must load as far as it can without
// running (adapted, decoded strictly module by module), and in which no
// apikey handler is kept from running by a handler before it (the check
// of internal/configcheck), unless its info string marks it as something else.
// docs/development.md lists the marks.

// docFiles are the documentation files whose blocks and links are checked.
func docFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	files = append([]string{"README.md"}, files...)
	if len(files) < 2 {
		t.Fatalf("no docs/*.md beside README.md (run in the repository's root)")
	}
	return files
}

// docBlock is a fenced code block of a Markdown file.
type docBlock struct {
	file  string
	line  int    // of the opening fence
	lang  string // the info string's first word
	marks []string
	body  []byte
}

func (b docBlock) String() string { return fmt.Sprintf("%s:%d (```%s)", b.file, b.line, b.info()) }

func (b docBlock) info() string { return strings.Join(append([]string{b.lang}, b.marks...), " ") }

var fenceRE = regexp.MustCompile("^( *)(```+|~~~+)\\s*([^`]*)$")

// fencedBlocks returns the fenced code blocks of a Markdown text, with
// the opening fence's indentation taken off their lines (blocks in list
// items are indented).
func fencedBlocks(file string, text []byte) ([]docBlock, error) {
	var blocks []docBlock
	var cur *docBlock
	var fence, indent string
	sc := bufio.NewScanner(bytes.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if cur == nil {
			m := fenceRE.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			words := strings.Fields(m[3])
			cur = &docBlock{file: file, line: n}
			if len(words) > 0 {
				cur.lang, cur.marks = strings.ToLower(words[0]), words[1:]
			}
			indent, fence = m[1], m[2]
			continue
		}
		if t := strings.TrimLeft(line, " "); strings.HasPrefix(t, fence[:1]) &&
			strings.Trim(t, fence[:1]) == "" && len(strings.TrimRight(t, " ")) >= len(fence) {
			blocks = append(blocks, *cur)
			cur = nil
			continue
		}
		line = strings.TrimPrefix(line, indent)
		cur.body = append(cur.body, line+"\n"...)
	}
	if cur != nil {
		return nil, fmt.Errorf("%s:%d: a fenced block is never closed", file, cur.line)
	}
	return blocks, sc.Err()
}

// The marks a block's info string may carry after its language.
const (
	markFragment      = "fragment"       // part of a config: not checked
	markSyntax        = "syntax"         // a syntax summary: not checked
	markExternal      = "external"       // needs a plugin this repository does not build: not checked
	markApikeyHandler = "apikey-handler" // json: apikey handler objects
	markKeyFile       = "key-file"       // json: a key file
	markResponse      = "response"       // json: a response body, valid JSON
	markShadowed      = "shadowed"       // a whole config shown as a mistake: an apikey handler in it never runs
)

// docCheck is what checking the documentation's blocks found.
type docCheck struct {
	blocks  map[string]int  // blocks checked, by kind
	skipped map[string]int  // blocks not checked, by mark
	modules map[string]bool // module IDs decoded
}

// checkBlock checks one block. Blocks of other languages are ignored.
func (c *docCheck) checkBlock(b docBlock) error {
	var kind string
	switch b.lang {
	case "caddyfile", "caddy":
		kind = "caddyfile"
	case "json":
		kind = "json"
	default:
		return nil
	}
	if len(b.marks) > 1 {
		return fmt.Errorf("more than one mark in the info string %q", b.info())
	}
	mark := ""
	if len(b.marks) == 1 {
		mark = b.marks[0]
	}
	switch mark {
	case markFragment, markSyntax, markExternal:
		c.skipped[mark]++
		return nil
	case "", markShadowed:
		shadowed := mark == markShadowed
		if shadowed {
			c.blocks[kind+" "+mark]++
		} else if kind == "caddyfile" {
			c.blocks["caddyfile"]++
		} else {
			c.blocks["json config"]++
		}
		if kind == "caddyfile" {
			return c.checkCaddyfile(b.String(), b.body, shadowed)
		}
		return c.checkConfigJSON(b.body, shadowed)
	case markApikeyHandler, markKeyFile, markResponse:
		if kind != "json" {
			return fmt.Errorf("the mark %q is for json blocks", mark)
		}
		c.blocks["json "+mark]++
		switch mark {
		case markKeyFile:
			return checkKeyFileBlock(b.body)
		case markResponse:
			if !json.Valid(b.body) {
				return errors.New("not valid JSON")
			}
			return nil
		}
		return c.checkHandlers(b.body)
	}
	return fmt.Errorf("unknown mark %q in the info string %q (known: %s)", mark, b.info(), strings.Join([]string{
		markFragment, markSyntax, markExternal, markApikeyHandler, markKeyFile, markResponse, markShadowed}, ", "))
}

// checkCaddyfile adapts a Caddyfile as `caddy adapt` does, in process: no
// error and no warning (so it must be formatted as `caddy fmt` formats
// it), then checks the JSON it adapts to; shadowed as for checkConfigJSON.
func (c *docCheck) checkCaddyfile(name string, body []byte, shadowed bool) error {
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		return errors.New("no caddyfile config adapter registered")
	}
	out, warnings, err := adapter.Adapt(body, map[string]any{"filename": name})
	if err != nil {
		return fmt.Errorf("does not adapt: %v", err)
	}
	if len(warnings) > 0 {
		var msgs []string
		for _, w := range warnings {
			msgs = append(msgs, w.String())
		}
		return fmt.Errorf("adapts with warnings: %s", strings.Join(msgs, "; "))
	}
	if err := c.checkConfigJSON(out, shadowed); err != nil {
		return fmt.Errorf("adapts to a config that does not check: %v\n%s", err, out)
	}
	return nil
}

// checkConfigJSON decodes a whole Caddy config as Caddy loads one: the
// config strictly (an unknown member is an error), then each module it
// holds, strictly, into the type its registered module makes; then runs
// the route-order check on its servers, which must find an apikey handler
// that never runs if shadowed is set, and none otherwise.
func (c *docCheck) checkConfigJSON(raw []byte, shadowed bool) error {
	var cfg caddy.Config
	if err := caddy.StrictUnmarshalJSON(raw, &cfg); err != nil {
		return fmt.Errorf("not a whole Caddy config (%v); if it is part of one, mark it (```json %s or %s)",
			err, markApikeyHandler, markFragment)
	}
	if cfg.Admin == nil && cfg.Logging == nil && cfg.StorageRaw == nil && len(cfg.AppsRaw) == 0 {
		return errors.New("an empty Caddy config")
	}
	if err := c.walk(reflect.ValueOf(&cfg), "config"); err != nil {
		return err
	}
	return checkRouteOrder(raw, shadowed)
}

// checkRouteOrder runs the check that warns, when a config loads, about an
// apikey handler that never runs because a handler before it in the same
// route answers every request first (internal/configcheck), on each server of a
// whole config. A config that shows this mistake on purpose is marked
// shadowed, and must show it; any other must not.
func checkRouteOrder(raw []byte, shadowed bool) error {
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]*caddyhttp.Server `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return fmt.Errorf("reading its servers' routes: %v", err)
	}
	var found []string
	for _, name := range slices.Sorted(maps.Keys(cfg.Apps.HTTP.Servers)) {
		for _, s := range configcheck.ShadowedAuths(cfg.Apps.HTTP.Servers[name]) {
			found = append(found, fmt.Sprintf("server %s: %s at %s answers before the apikey handler at %s",
				name, s.Answerer, s.AnswererAt, s.ApikeyAt))
		}
	}
	switch {
	case shadowed && len(found) == 0:
		return fmt.Errorf("marked %s, but no apikey handler in it is kept from running", markShadowed)
	case !shadowed && len(found) > 0:
		return fmt.Errorf("an apikey handler never runs (%s); if the block shows this mistake on purpose, mark it (```caddyfile %s)",
			strings.Join(found, "; "), markShadowed)
	}
	return nil
}

// checkHandlers checks one or more handler objects, one after another in
// the block, each with "handler": "apikey".
func (c *docCheck) checkHandlers(raw []byte) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	n := 0
	for ; ; n++ {
		var obj json.RawMessage
		if err := dec.Decode(&obj); err == io.EOF {
			break
		} else if err != nil {
			return err
		}
		var head struct{ Handler string }
		if err := json.Unmarshal(obj, &head); err != nil || head.Handler != "apikey" {
			return fmt.Errorf("object %d is not an apikey handler (\"handler\": \"apikey\")", n+1)
		}
		mod, err := c.loadInline("http.handlers", "handler", obj, fmt.Sprintf("object %d", n+1))
		if err != nil {
			return err
		}
		if _, ok := mod.(*Handler); !ok {
			return fmt.Errorf("object %d decodes into %T, not this package's Handler", n+1, mod)
		}
	}
	if n == 0 {
		return errors.New("no handler object")
	}
	return nil
}

// checkKeyFileBlock loads a key file as the handler does.
func checkKeyFileBlock(raw []byte) error {
	_, err := keyfile.ParseKeySet(raw)
	return err
}

// loadInline decodes a module object whose name is its member key, in
// namespace ns, as Caddy's loadModuleInline does.
func (c *docCheck) loadInline(ns, key string, raw json.RawMessage, path string) (any, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	var name string
	if err := json.Unmarshal(obj[key], &name); err != nil || name == "" {
		return nil, fmt.Errorf("%s: no module name in %q", path, key)
	}
	delete(obj, key)
	rest, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	return c.load(moduleID(ns, name), rest, path)
}

func moduleID(ns, name string) string {
	if ns == "" {
		return name
	}
	return ns + "." + name
}

// load decodes raw strictly into a new value of module id, as Caddy's
// LoadModuleByID does, then the modules that value holds.
func (c *docCheck) load(id string, raw json.RawMessage, path string) (any, error) {
	info, err := caddy.GetModule(id)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	val := info.New()
	if len(raw) > 0 {
		if err := caddy.StrictUnmarshalJSON(raw, val); err != nil {
			return nil, fmt.Errorf("%s: module %s: %v", path, id, err)
		}
	}
	c.modules[id] = true
	return val, c.walk(reflect.ValueOf(val), path+"("+id+")")
}

var rawMessageType = reflect.TypeFor[json.RawMessage]()

// walk finds the module fields in v, those with a `caddy:"namespace=…"`
// tag, and loads what they hold, as Caddy's Context.LoadModule does.
func (c *docCheck) walk(v reflect.Value, path string) error {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return nil
		}
		return c.walk(v.Elem(), path)
	case reflect.Struct:
		for i := range v.NumField() {
			f := v.Type().Field(i)
			if !f.IsExported() {
				continue
			}
			name := path + "." + f.Name
			tag, ok := f.Tag.Lookup("caddy")
			if !ok {
				if err := c.walk(v.Field(i), name); err != nil {
					return err
				}
				continue
			}
			opts, err := caddy.ParseStructTag(tag)
			if err != nil {
				return fmt.Errorf("%s: %v", name, err)
			}
			ns, ok := opts["namespace"]
			if !ok {
				continue
			}
			if err := c.loadField(v.Field(i), ns, opts["inline_key"], name); err != nil {
				return err
			}
		}
	case reflect.Slice, reflect.Array:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			return nil
		}
		for i := range v.Len() {
			if err := c.walk(v.Index(i), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	case reflect.Map:
		for _, k := range v.MapKeys() {
			if err := c.walk(v.MapIndex(k), fmt.Sprintf("%s[%v]", path, k)); err != nil {
				return err
			}
		}
	}
	return nil
}

// loadField loads the modules of one module field: json.RawMessage,
// []json.RawMessage, [][]json.RawMessage (module name inline), or a map
// of them: keyed by module name (a caddy.ModuleMap, no inline key) or by
// something else (module name inline).
func (c *docCheck) loadField(v reflect.Value, ns, inline, path string) error {
	t := v.Type()
	switch {
	case t == rawMessageType:
		if v.Len() == 0 {
			return nil
		}
		_, err := c.loadInline(ns, inline, v.Interface().(json.RawMessage), path)
		return err
	case t.Kind() == reflect.Slice:
		for i := range v.Len() {
			if err := c.loadField(v.Index(i), ns, inline, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	case t.Kind() == reflect.Map && t.Elem() == rawMessageType:
		for _, k := range v.MapKeys() {
			raw := v.MapIndex(k).Interface().(json.RawMessage)
			p := fmt.Sprintf("%s[%v]", path, k)
			var err error
			if inline == "" {
				_, err = c.load(moduleID(ns, k.String()), raw, p)
			} else {
				_, err = c.loadInline(ns, inline, raw, p)
			}
			if err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("%s: a module field of type %s this test does not know", path, t)
	}
	return nil
}

// TestDocConfigs checks every complete config in README.md and docs/*.md.
func TestDocConfigs(t *testing.T) {
	c := &docCheck{blocks: map[string]int{}, skipped: map[string]int{}, modules: map[string]bool{}}
	for _, file := range docFiles(t) {
		text, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		blocks, err := fencedBlocks(file, text)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range blocks {
			if err := c.checkBlock(b); err != nil {
				t.Errorf("%s: %v", b, err)
			}
		}
	}
	total := 0
	for kind, n := range c.blocks {
		total += n
		t.Logf("checked %d %s blocks", n, kind)
	}
	t.Logf("checked %d blocks in all; not checked, as marked: %v", total, c.skipped)
	ids := slices.Sorted(maps.Keys(c.modules))
	t.Logf("modules decoded: %s", strings.Join(ids, " "))
	// The test must not pass by finding nothing.
	for _, kind := range []string{"caddyfile", "json config", "json " + markApikeyHandler, "json " + markKeyFile} {
		if c.blocks[kind] == 0 {
			t.Errorf("no %s block found to check", kind)
		}
	}
	for _, id := range []string{"http.handlers.apikey", "http.handlers.apikey.stores.file", "http.handlers.apikey.stores.redis"} {
		if !c.modules[id] {
			t.Errorf("no config in the docs uses module %s", id)
		}
	}
}

// TestDocCheckRefuses checks that the check refuses what it must, so that
// TestDocConfigs passing means something.
func TestDocCheckRefuses(t *testing.T) {
	site := func(body string) string { return "example.com {\n" + body + "}\n" }
	for _, tc := range []struct{ name, info, body, want string }{
		{"caddyfile: unknown subdirective", "caddyfile", site("\tapikey keys.json {\n\t\tnope\n\t}\n"), "unrecognized subdirective"},
		{"caddyfile: unknown directive", "caddyfile", site("\tnot_a_directive\n"), "unrecognized directive"},
		{"caddyfile: not formatted", "caddyfile", site("    apikey keys.json\n"), "not formatted"},
		{"caddyfile: a lone directive", "caddy", "apikey keys.json {\n\toptional\n}\n", "does not adapt"},
		{"json: unknown handler member", "json apikey-handler", `{"handler": "apikey", "keys_file": "k.json", "keysfile": "k.json"}`, `unknown field "keysfile"`},
		{"json: unknown store member", "json apikey-handler", `{"handler": "apikey", "store": {"backend": "redis", "url": "redis://h", "prefx": "a:"}}`, `unknown field "prefx"`},
		{"json: unknown store", "json apikey-handler", `{"handler": "apikey", "store": {"backend": "etcd"}}`, "http.handlers.apikey.stores.etcd"},
		{"json: another handler", "json apikey-handler", `{"handler": "file_server"}`, "not an apikey handler"},
		{"json: a handler as a config", "json", `{"handler": "apikey", "keys_file": "k.json"}`, "not a whole Caddy config"},
		{"json: unknown handler", "json", `{"apps": {"http": {"servers": {"s": {"routes": [{"handle": [{"handler": "nope"}]}]}}}}}`, "http.handlers.nope"},
		{"json: unknown matcher", "json", `{"apps": {"http": {"servers": {"s": {"routes": [{"match": [{"nope": {}}]}]}}}}}`, "http.matchers.nope"},
		{"json: unknown member deep down", "json", `{"apps": {"http": {"servers": {"s": {"routes": [{"handle": [{"handler": "subroute", "routes": [{"handle": [{"handler": "apikey", "keys_file": "k.json", "realms": "x"}]}]}]}]}}}}}`, `unknown field "realms"`},
		{"json: key file", "json key-file", `{"api_keys": [{"id": "a", "key_hash": "abc"}]}`, "key_hash"},
		{"json: response", "json response", `{"success": false,}`, "not valid JSON"},
		{"unknown mark", "json apikey-handlers", `{}`, "unknown mark"},
		{"mark for another language", "caddyfile key-file", "{\n}\n", "for json blocks"},
		{"caddyfile: apikey after respond in a route", "caddyfile", site("\troute {\n\t\trespond \"secret\"\n\t\tapikey keys.json\n\t}\n"), "an apikey handler never runs"},
		{"caddyfile: shadowed, but apikey runs", "caddyfile shadowed", site("\troute {\n\t\tapikey keys.json\n\t\trespond \"secret\"\n\t}\n"), "no apikey handler in it is kept from running"},
		{"json: apikey after static_response", "json", `{"apps": {"http": {"servers": {"s": {"routes": [{"handle": [{"handler": "static_response", "body": "secret"}, {"handler": "apikey", "keys_file": "k.json"}]}]}}}}}`, "an apikey handler never runs"},
		{"shadowed on a handler", "json shadowed", `{"handler": "apikey", "keys_file": "k.json"}`, "not a whole Caddy config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			words := strings.Fields(tc.info)
			b := docBlock{file: "test.md", line: 1, lang: words[0], marks: words[1:], body: []byte(tc.body)}
			c := &docCheck{blocks: map[string]int{}, skipped: map[string]int{}, modules: map[string]bool{}}
			err := c.checkBlock(b)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// Links: [text](target) outside code; a relative target must name a file
// of the repository, and its #anchor a heading of that Markdown file.
var (
	linkRE       = regexp.MustCompile(`!?\[([^\]]*)\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)
	codeSpanRE   = regexp.MustCompile("`[^`]*`")
	headingRE    = regexp.MustCompile(`^(#{1,6})\s+(.*?)\s*#*\s*$`)
	schemeLinkRE = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)
)

// proseOf is a Markdown text without its fenced blocks, each replaced by
// an empty line, so that line numbers stay.
func proseOf(text string) []string {
	lines := strings.Split(text, "\n")
	fence := ""
	for i, l := range lines {
		t := strings.TrimLeft(l, " ")
		switch {
		case fence == "" && (strings.HasPrefix(t, "```") || strings.HasPrefix(t, "~~~")):
			fence = t[:3]
			lines[i] = ""
		case fence != "":
			if strings.HasPrefix(t, fence) && strings.Trim(strings.TrimSpace(t), fence[:1]) == "" {
				fence = ""
			}
			lines[i] = ""
		}
	}
	return lines
}

// headingAnchors are the anchors GitHub gives a Markdown file's headings:
// the heading's text in lower case, without punctuation but `-` and `_`,
// spaces made `-`, and `-1`, `-2`… after a repeated one.
func headingAnchors(text string) map[string]bool {
	anchors := map[string]bool{}
	seen := map[string]int{}
	for _, l := range proseOf(text) {
		m := headingRE.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		h := linkRE.ReplaceAllString(m[2], "$1")
		var b strings.Builder
		for _, r := range strings.ToLower(h) {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsNumber(r) || unicode.Is(unicode.Mn, r):
				b.WriteRune(r)
			}
		}
		a := b.String()
		if n := seen[a]; n > 0 {
			anchors[fmt.Sprintf("%s-%d", a, n)] = true
		} else {
			anchors[a] = true
		}
		seen[a]++
	}
	return anchors
}

// checkLinks checks the relative links of the Markdown files (paths
// relative to root): each must lead to a file under root and, with an
// #anchor, to a heading of that Markdown file. It returns the problems
// found and the number of links checked.
func checkLinks(root string, files []string) (problems []string, checked int) {
	anchorsOf := map[string]map[string]bool{}
	anchors := func(file string) (map[string]bool, error) {
		if a, ok := anchorsOf[file]; ok {
			return a, nil
		}
		text, err := os.ReadFile(filepath.Join(root, file))
		if err != nil {
			return nil, err
		}
		anchorsOf[file] = headingAnchors(string(text))
		return anchorsOf[file], nil
	}
	for _, file := range files {
		text, err := os.ReadFile(filepath.Join(root, file))
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		// Code spans go (a link may not start in one), their line breaks
		// stay, so that a link may wrap and its line is counted right.
		prose := strings.Join(proseOf(string(text)), "\n")
		prose = codeSpanRE.ReplaceAllStringFunc(prose, func(s string) string {
			return strings.Repeat("\n", strings.Count(s, "\n"))
		})
		for _, m := range linkRE.FindAllStringSubmatchIndex(prose, -1) {
			target := prose[m[4]:m[5]]
			if schemeLinkRE.MatchString(target) {
				continue
			}
			checked++
			where := fmt.Sprintf("%s:%d: link %s", file, 1+strings.Count(prose[:m[0]], "\n"), target)
			path, anchor, _ := strings.Cut(target, "#")
			dest := file
			if path != "" {
				dest = filepath.Join(filepath.Dir(file), filepath.FromSlash(path))
				if !filepath.IsLocal(dest) {
					problems = append(problems, where+": leads out of the repository")
					continue
				}
				if _, err := os.Stat(filepath.Join(root, dest)); err != nil {
					problems = append(problems, fmt.Sprintf("%s: no such file: %s", where, dest))
					continue
				}
			}
			if anchor == "" {
				continue
			}
			if !strings.HasSuffix(dest, ".md") {
				problems = append(problems, where+": an anchor in a file that is not Markdown")
				continue
			}
			a, err := anchors(dest)
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", where, err))
				continue
			}
			if !a[anchor] {
				known := slices.Sorted(maps.Keys(a))
				problems = append(problems, fmt.Sprintf("%s: %s has no heading with anchor #%s (it has: %s)",
					where, dest, anchor, strings.Join(known, ", ")))
			}
		}
	}
	return problems, checked
}

// TestDocLinks checks that every relative link of README.md and docs/*.md
// leads to a file of the repository and, with an #anchor, to a heading.
func TestDocLinks(t *testing.T) {
	problems, checked := checkLinks(".", docFiles(t))
	for _, p := range problems {
		t.Error(p)
	}
	t.Logf("checked %d relative links", checked)
	if checked == 0 {
		t.Error("no relative link found to check")
	}
}

// TestDocLinksRefuses checks that the link check finds what it must, so
// that TestDocLinks passing means something.
func TestDocLinksRefuses(t *testing.T) {
	root := t.TempDir()
	write := func(name, text string) {
		t.Helper()
		path := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("README.md", "# Top\n\n## Header names with `_` or `.`\n\n"+
		"[ok](docs/a.md#the-key-store-store), [ok](#header-names-with-_-or-), [ok](#top), [ok](https://example.com/#x),\n"+
		"`[not a link](nowhere.md)`, [wrapped\nlink](docs/a.md#repeated-1)\n\n"+
		"```sh\n# [not a link](nowhere.md)\n```\n\n"+
		"[bad file](docs/b.md) [bad anchor](docs/a.md#the-key-store) [bad here](#nope)\n"+
		"[outside](../x.md) [anchor in code](LICENSE#x)\n")
	write("docs/a.md", "# A\n\n## The key store: `store`\n\n## Repeated\n\n## Repeated\n")
	write("LICENSE", "x\n")
	problems, checked := checkLinks(root, []string{"README.md", "docs/a.md"})
	if checked != 9 { // 4 good, 5 bad; not the one with a scheme, nor those in code
		t.Errorf("checked %d links, want 9", checked)
	}
	want := []string{
		"README.md:13: link docs/b.md: no such file",
		"README.md:13: link docs/a.md#the-key-store: docs/a.md has no heading with anchor #the-key-store",
		"README.md:13: link #nope: README.md has no heading",
		"README.md:14: link ../x.md: leads out of the repository",
		"README.md:14: link LICENSE#x: an anchor in a file that is not Markdown",
	}
	if len(problems) != len(want) {
		t.Errorf("got %d problems, want %d:\n%s", len(problems), len(want), strings.Join(problems, "\n"))
	}
	for _, w := range want {
		if !slices.ContainsFunc(problems, func(p string) bool { return strings.HasPrefix(p, w) }) {
			t.Errorf("no problem %q among:\n%s", w, strings.Join(problems, "\n"))
		}
	}
}

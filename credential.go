package apikey

import (
	"net/http"
	"net/url"
	"strings"
)

// credentialSource is a request header that may carry the key, with its
// name in canonical form so the hot path reads the header map directly.
type credentialSource struct {
	header string
	scheme string
}

type credStatus uint8

const (
	credNone      credStatus = iota // no source carries a key
	credFound                       // one source carries exactly one key
	credAmbiguous                   // the first source with a key carries different keys
)

// credential is the key a request presents and where it came from.
type credential struct {
	key    string
	status credStatus
	header string // canonical header name, when the key came from a header
	param  string // query parameter name, when the key came from the query
}

// credential finds the key of a request: the configured headers in order,
// then the query parameter. The first source that carries a key wins. A
// source that carries two different keys (a repeated header or parameter)
// makes the request ambiguous rather than letting the first one win,
// since a proxy in front might pick another one than Caddy does.
func (h *Handler) credential(r *http.Request) credential {
	for i := range h.sources {
		src := &h.sources[i]
		if key, st := src.extract(r.Header[src.header]); st != credNone {
			return credential{key: key, status: st, header: src.header}
		}
	}
	if h.query != "" && r.URL.RawQuery != "" {
		if key, st := queryValue(r.URL.RawQuery, h.query); st != credNone {
			return credential{key: key, status: st, param: h.query}
		}
	}
	return credential{}
}

// extract returns the key carried by the values of one header.
func (s *credentialSource) extract(values []string) (string, credStatus) {
	var found string
	st := credNone
	for _, v := range values {
		k := s.keyFrom(v)
		if k == "" {
			continue
		}
		if st == credFound && k != found {
			return "", credAmbiguous
		}
		found, st = k, credFound
	}
	return found, st
}

// keyFrom returns the key in one header value, or "" if it carries none: an
// empty value, or (for a source with a scheme) a value with another scheme
// or with the scheme alone. The scheme is matched without regard to case
// and spaces around the key are trimmed.
func (s *credentialSource) keyFrom(v string) string {
	v = trimOWS(v)
	if s.scheme == "" {
		return v
	}
	n := len(s.scheme)
	if len(v) <= n || !strings.EqualFold(v[:n], s.scheme) || (v[n] != ' ' && v[n] != '\t') {
		return ""
	}
	return trimOWS(v[n:])
}

// trimOWS trims HTTP's optional white space (spaces and tabs).
func trimOWS(s string) string { return strings.Trim(s, " \t") }

// queryValue returns the value of parameter name in a raw query string,
// without parsing the whole query into a map (the hot path allocates only
// when the value is percent-encoded). Empty values are no key.
func queryValue(rawQuery, name string) (string, credStatus) {
	var found string
	st := credNone
	for rawQuery != "" {
		var pair string
		pair, rawQuery, _ = strings.Cut(rawQuery, "&")
		k, v, _ := strings.Cut(pair, "=")
		if !queryNameIs(k, name) {
			continue
		}
		if strings.ContainsAny(v, "%+") {
			if unescaped, err := url.QueryUnescape(v); err == nil {
				v = unescaped
			}
		}
		if v == "" {
			continue
		}
		if st == credFound && v != found {
			return "", credAmbiguous
		}
		found, st = v, credFound
	}
	return found, st
}

// queryNameIs reports whether the raw (possibly escaped) parameter name k is
// name.
func queryNameIs(k, name string) bool {
	if k == name {
		return true
	}
	if !strings.ContainsAny(k, "%+") {
		return false
	}
	unescaped, err := url.QueryUnescape(k)
	return err == nil && unescaped == name
}

// hideCredentials removes every key the request carries in the enabled
// sources, so that the handlers after this one (a reverse proxy's upstream
// above all) never see one: not the key that authenticated the request, nor
// a copy or another key sent beside it. Header values that carry no key,
// such as Authorization credentials of another scheme meant for the
// upstream, stay.
func (h *Handler) hideCredentials(r *http.Request) {
	for i := range h.sources {
		src := &h.sources[i]
		values := r.Header[src.header]
		var kept []string
		for _, v := range values {
			if src.keyFrom(v) == "" {
				kept = append(kept, v)
			}
		}
		switch {
		case len(kept) == len(values):
		case len(kept) == 0:
			delete(r.Header, src.header)
		default:
			r.Header[src.header] = kept
		}
	}
	if h.query != "" && r.URL.RawQuery != "" {
		if q := removeQueryParam(r.URL.RawQuery, h.query); q != r.URL.RawQuery {
			r.URL.RawQuery = q
			r.RequestURI = r.URL.RequestURI()
		}
	}
}

// removeQueryParam drops every occurrence of parameter name from a raw query
// string and keeps the other parameters as they were, in their order.
func removeQueryParam(rawQuery, name string) string {
	var kept []string
	for _, pair := range strings.Split(rawQuery, "&") {
		k, _, _ := strings.Cut(pair, "=")
		if pair == "" || queryNameIs(k, name) {
			continue
		}
		kept = append(kept, pair)
	}
	return strings.Join(kept, "&")
}

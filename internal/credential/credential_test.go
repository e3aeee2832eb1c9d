package credential

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// defaults are the apikey handler's default sources.
var defaults = Sources{
	Headers: []Header{{Name: "Authorization", Scheme: "Bearer"}, {Name: "X-Api-Key"}},
	Query:   "api_key",
}

// newRequest is a GET of target with headers given as "Name: value".
func newRequest(target string, headers ...string) *http.Request {
	r := httptest.NewRequest("GET", target, nil)
	for _, h := range headers {
		name, value, _ := strings.Cut(h, ":")
		r.Header.Add(name, strings.TrimPrefix(value, " "))
	}
	return r
}

func TestFind(t *testing.T) {
	big := "sk_" + strings.Repeat("A", 64*1024-3)
	tests := []struct {
		name    string
		target  string
		headers []string
		want    Credential
	}{
		{"nothing", "/", nil, Credential{}},
		{"bearer", "/", []string{"Authorization: Bearer sk_one"}, Credential{Key: "sk_one", Status: Found, Header: "Authorization"}},
		{"bearer lower case", "/", []string{"Authorization: bearer sk_one"}, Credential{Key: "sk_one", Status: Found, Header: "Authorization"}},
		{"bearer upper case", "/", []string{"Authorization: BEARER sk_one"}, Credential{Key: "sk_one", Status: Found, Header: "Authorization"}},
		{"bearer mixed case", "/", []string{"Authorization: bEaReR sk_one"}, Credential{Key: "sk_one", Status: Found, Header: "Authorization"}},
		{"bearer spaces and tabs", "/", []string{"Authorization:  \t Bearer \t  sk_one \t "}, Credential{Key: "sk_one", Status: Found, Header: "Authorization"}},
		{"bearer tab separator", "/", []string{"Authorization: Bearer\tsk_one"}, Credential{Key: "sk_one", Status: Found, Header: "Authorization"}},
		{"bearer without separator", "/", []string{"Authorization: Bearersk_one"}, Credential{}},
		{"bearer alone", "/", []string{"Authorization: Bearer"}, Credential{}},
		{"bearer and spaces", "/", []string{"Authorization: Bearer    "}, Credential{}},
		{"bearer and tabs", "/", []string{"Authorization: Bearer \t\t"}, Credential{}},
		{"basic ignored", "/", []string{"Authorization: Basic Ym9iOnNlY3JldA=="}, Credential{}},
		{"bare key in authorization ignored", "/", []string{"Authorization: sk_one"}, Credential{}},
		{"x-api-key", "/", []string{"X-API-Key: sk_two"}, Credential{Key: "sk_two", Status: Found, Header: "X-Api-Key"}},
		{"x-api-key lower-case name", "/", []string{"x-api-Key: sk_two"}, Credential{Key: "sk_two", Status: Found, Header: "X-Api-Key"}},
		{"x-api-key trimmed", "/", []string{"X-Api-Key: \t sk_two  "}, Credential{Key: "sk_two", Status: Found, Header: "X-Api-Key"}},
		{"x-api-key empty", "/", []string{"X-Api-Key: "}, Credential{}},
		{"x-api-key blank", "/", []string{"X-Api-Key:   \t"}, Credential{}},
		{"query", "/?api_key=sk_three", nil, Credential{Key: "sk_three", Status: Found, Param: "api_key"}},
		{"query among others", "/p?a=1&api_key=sk_three&b=2", nil, Credential{Key: "sk_three", Status: Found, Param: "api_key"}},
		{"query empty", "/?api_key=", nil, Credential{}},
		{"query no value", "/?api_key", nil, Credential{}},
		{"query name case matters", "/?API_KEY=sk_three", nil, Credential{}},
		{"query name prefix", "/?api_keys=sk_three&xapi_key=sk_3", nil, Credential{}},
		{"query empty then value", "/?api_key=&api_key=sk_three", nil, Credential{Key: "sk_three", Status: Found, Param: "api_key"}},
		{"query percent-encoded value", "/?api_key=sk%5Fthree%2D", nil, Credential{Key: "sk_three-", Status: Found, Param: "api_key"}},
		{"query percent-encoded name", "/?api%5Fkey=sk_three", nil, Credential{Key: "sk_three", Status: Found, Param: "api_key"}},
		{"query plus is a space", "/?api_key=sk+three", nil, Credential{Key: "sk three", Status: Found, Param: "api_key"}},
		{"query same value twice", "/?api_key=sk_three&api_key=sk%5Fthree", nil, Credential{Key: "sk_three", Status: Found, Param: "api_key"}},
		{"query different values", "/?api_key=sk_three&api_key=sk_four", nil, Credential{Status: Ambiguous, Param: "api_key"}},
		{"bearer beats x-api-key and query", "/?api_key=sk_three", []string{"X-API-Key: sk_two", "Authorization: Bearer sk_one"}, Credential{Key: "sk_one", Status: Found, Header: "Authorization"}},
		{"x-api-key beats query", "/?api_key=sk_three", []string{"X-API-Key: sk_two"}, Credential{Key: "sk_two", Status: Found, Header: "X-Api-Key"}},
		{"empty bearer falls through", "/?api_key=sk_three", []string{"Authorization: Bearer "}, Credential{Key: "sk_three", Status: Found, Param: "api_key"}},
		{"basic falls through to x-api-key", "/", []string{"Authorization: Basic Ym9iOnNlY3JldA==", "X-API-Key: sk_two"}, Credential{Key: "sk_two", Status: Found, Header: "X-Api-Key"}},
		{"empty x-api-key falls through", "/?api_key=sk_three", []string{"X-API-Key: "}, Credential{Key: "sk_three", Status: Found, Param: "api_key"}},
		{"same bearer twice", "/", []string{"Authorization: Bearer sk_one", "Authorization: bearer  sk_one"}, Credential{Key: "sk_one", Status: Found, Header: "Authorization"}},
		{"different bearers", "/", []string{"Authorization: Bearer sk_one", "Authorization: Bearer sk_1"}, Credential{Status: Ambiguous, Header: "Authorization"}},
		{"basic and bearer", "/", []string{"Authorization: Basic Ym9i", "Authorization: Bearer sk_one"}, Credential{Key: "sk_one", Status: Found, Header: "Authorization"}},
		{"same x-api-key twice", "/", []string{"X-API-Key: sk_two", "X-Api-Key: sk_two"}, Credential{Key: "sk_two", Status: Found, Header: "X-Api-Key"}},
		{"different x-api-keys", "/", []string{"X-API-Key: sk_two", "X-Api-Key: sk_2"}, Credential{Status: Ambiguous, Header: "X-Api-Key"}},
		{"empty and a x-api-key", "/", []string{"X-API-Key: ", "X-Api-Key: sk_two"}, Credential{Key: "sk_two", Status: Found, Header: "X-Api-Key"}},
		{"64 KiB bearer", "/", []string{"Authorization: Bearer " + big}, Credential{Key: big, Status: Found, Header: "Authorization"}},
		{"64 KiB x-api-key", "/", []string{"X-Api-Key: " + big}, Credential{Key: big, Status: Found, Header: "X-Api-Key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := defaults.Find(newRequest(tt.target, tt.headers...))
			if got.Status == Ambiguous {
				got.Key = "" // what an ambiguous result carries does not matter
			}
			if got != tt.want {
				t.Errorf("got %+v\nwant %+v", shorten(got), shorten(tt.want))
			}
		})
	}
}

func shorten(c Credential) Credential {
	if len(c.Key) > 40 {
		c.Key = c.Key[:40] + "..."
	}
	return c
}

func TestRemoveQueryParam(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"api_key=k", ""},
		{"a=1&api_key=k&b=2", "a=1&b=2"},
		{"api_key=k&a=1", "a=1"},
		{"a=1&api_key=k", "a=1"},
		{"api_key=k&api_key=j&api_key=", ""},
		{"api%5Fkey=k&x=1", "x=1"},
		{"api_key&x=1", "x=1"},
		{"x=api_key&api_keys=1&apikey=2&api-key=3&xapi_key=4", "x=api_key&api_keys=1&apikey=2&api-key=3&xapi_key=4"},
		{"b=%20x&api_key=k&a=1+2", "b=%20x&a=1+2"},
		// Nothing to remove: the query stays byte for byte, odd
		// separators, escapes and all.
		{"a=1&&b=%zz;c&=d&", "a=1&&b=%zz;c&=d&"},
		// ";" separates pairs too, for many upstreams.
		{"x=1;api_key=k", "x=1"},
		{"api_key=k;x=1", "x=1"},
		{"a=1;api_key=k&b=2;c=3", "a=1&b=2;c=3"},
		{"a=1&api_key=k;api_key=j;b=2", "a=1;b=2"},
		// Every occurrence, however escaped: lower-case hex, double
		// encoding, IIS's %u, "+" and malformed escapes beside.
		{"api%5fkey=k&x=1", "x=1"},
		{"api%255Fkey=k&x=1", "x=1"},
		{"%2561pi_key=k&x=1", "x=1"},
		{"api%u005Fkey=k&x=1", "x=1"},
		{"%61%70%69%5F%6B%65%79=k", ""},
		{"api_key%=k&api_key%zz=j&x=1", "api_key%=k&api_key%zz=j&x=1"},
		// In another case (ASP.NET's query collection ignores it).
		{"API_KEY=k&Api_Key=j&x=1", "x=1"},
		// As PHP reads names: spaces, dots and "[" for "_", an array
		// suffix, leading spaces, a NUL.
		{"api.key=k&api+key=j&api%20key=i&api[key=h&x=1", "x=1"},
		{"api_key[]=k&api_key[0]=j&api_key%5B%5D=i&x=1", "x=1"},
		{"+api_key=k&%00=x&api_key%00junk=j&x=1", "%00=x&x=1"},
		// A value that looks like a pair is part of its pair.
		{"x=api_key%3Dk&y=1", "x=api_key%3Dk&y=1"},
		{"api_key=k&", ""},
		{"a=1&api_key=k&", "a=1&"},
	}
	for _, tt := range tests {
		if got := RemoveQueryParam(tt.in, "api_key"); got != tt.want {
			t.Errorf("RemoveQueryParam(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestHide(t *testing.T) {
	// Every key goes, from every enabled source: the one that
	// authenticated and any other sent beside it. What carries no key
	// stays.
	r := newRequest("/p?x=1&api_key=sk_three", "Authorization: Bearer sk_one", "Authorization: Basic Ym9i", "X-Api-Key: sk_two", "X-Other: 1")
	defaults.Hide(r)
	if got := r.Header["Authorization"]; len(got) != 1 || got[0] != "Basic Ym9i" {
		t.Errorf("Authorization after hiding: %q, want only the Basic value", got)
	}
	if _, ok := r.Header["X-Api-Key"]; ok {
		t.Errorf("X-API-Key still there: %q", r.Header["X-Api-Key"])
	}
	if r.Header.Get("X-Other") != "1" || r.URL.RawQuery != "x=1" {
		t.Errorf("what carries no key was touched: %v %q", r.Header, r.URL.RawQuery)
	}

	r = newRequest("/p?a=1&api_key=sk_three&b=2")
	defaults.Hide(r)
	if r.URL.RawQuery != "a=1&b=2" || r.RequestURI != "/p?a=1&b=2" {
		t.Errorf("after hiding: RawQuery %q RequestURI %q", r.URL.RawQuery, r.RequestURI)
	}
	if strings.Contains(r.URL.String(), "sk_three") {
		t.Errorf("the key is still in the URL %s", r.URL)
	}

	r = newRequest("/p?api_key=sk_three")
	defaults.Hide(r)
	if r.URL.RawQuery != "" || r.RequestURI != "/p" {
		t.Errorf("after hiding the only parameter: RawQuery %q RequestURI %q", r.URL.RawQuery, r.RequestURI)
	}
}

// Hiding allocates nothing for a query with nothing to hide and plain
// names, the common case of a request admitted by a header.
func TestRemoveQueryParamNoAllocs(t *testing.T) {
	for _, q := range []string{"", "page=2&sort=name;dir=asc", "q=a%20b&x=1+2"} {
		if n := testing.AllocsPerRun(100, func() { RemoveQueryParam(q, "api_key") }); n != 0 {
			t.Errorf("RemoveQueryParam(%q) allocates %v times", q, n)
		}
	}
}

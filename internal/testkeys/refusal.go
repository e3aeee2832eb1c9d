package testkeys

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// RefusalOf returns the code and message of a JSON refusal body, failing
// the test if the body is not exactly the envelope: no other members, no
// missing ones, nothing after it.
func RefusalOf(t testing.TB, body string) (code, message string) {
	t.Helper()
	var env refusalBody
	dec := json.NewDecoder(strings.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		t.Fatalf("body is not the JSON envelope: %v: %q", err, Truncate(body))
	}
	if _, err := dec.Token(); err != io.EOF {
		t.Fatalf("body has more after the JSON envelope: %q", Truncate(body))
	}
	if env.Success == nil || *env.Success || env.Error == nil || env.Error.Code == nil || env.Error.Message == nil {
		t.Fatalf("body is not a refusal ({\"success\": false, \"error\": {\"code\", \"message\"}}): %q", Truncate(body))
	}
	return *env.Error.Code, *env.Error.Message
}

// AssertRefusal checks a JSON refusal: status, headers and body (as
// RefusalOf), and that no secret appears in it. It returns the message.
// realm is the challenge a 401 must carry; other statuses must carry none.
func AssertRefusal(t testing.TB, resp *http.Response, body string, status int, code, realm string, secrets ...string) string {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d; body %q", resp.StatusCode, status, Truncate(body))
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", cc)
	}
	challenge := resp.Header.Values("WWW-Authenticate")
	if status == http.StatusUnauthorized {
		if want := `Bearer realm="` + realm + `"`; len(challenge) != 1 || challenge[0] != want {
			t.Errorf("WWW-Authenticate %q, want %q", challenge, want)
		}
	} else if len(challenge) != 0 {
		t.Errorf("WWW-Authenticate %q on a %d", challenge, status)
	}
	gotCode, message := RefusalOf(t, body)
	if gotCode != code {
		t.Errorf("error code %q, want %q", gotCode, code)
	}
	if message == "" {
		t.Error("empty error message")
	}
	for _, s := range secrets {
		if s != "" && strings.Contains(body, SecretPart(s)) {
			t.Errorf("the refusal echoes the key: %q", Truncate(body))
		}
	}
	return message
}

// SecretPart is the part of a raw key that must never be shown: all of it
// after the public prefix.
func SecretPart(raw string) string {
	if len(raw) > 11 {
		return raw[11:]
	}
	return raw
}

func Truncate(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// refusalBody is the JSON body of a refused request; pointers tell a
// missing member from an empty one.
type refusalBody struct {
	Success *bool `json:"success"`
	Error   *struct {
		Code    *string `json:"code"`
		Message *string `json:"message"`
	} `json:"error"`
}

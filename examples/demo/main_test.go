package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestRun runs the demo and checks the timeline's key lines, so that the
// README's first command cannot rot unnoticed.
func TestRun(t *testing.T) {
	var out bytes.Buffer
	if err := run(&out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"+20h     unary  call  ok  renewed: expires at +44h",
		"+40h     stream call  ok  renewed: expires at +64h",
		"+160h    unary  call  ok  renewed: expires at +168h",
		"+170h    unary  call  rejected: SESSION_EXPIRED",
		"+30h     unary  call  rejected: TOKEN_EXPIRED",
		"+30h     unary  call  ok  after a transparent refresh and retry: expires at +54h",
		"the client refreshed 1 time(s)",
		"+2h      unary  call  rejected: SESSION_REVOKED",
		"+30h     unary  call  rejected: SESSION_REVOKED",
		"swapped in 8 renewed tokens",
		"all steps behaved as expected",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q\n%s", want, out.String())
		}
	}
}

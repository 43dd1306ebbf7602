package transports

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestProtocolDocListsEveryCloseCode: the close-code table of PROTOCOL.md,
// which client authors read, names every code the gateway declares in its
// one table (gateway/disconnect.go), so a new code cannot ship
// undocumented.
func TestProtocolDocListsEveryCloseCode(t *testing.T) {
	src, err := os.ReadFile("../gateway/disconnect.go")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	declared := regexp.MustCompile(`(?:Disconnect\{|= )(\d{4})\b`).FindAllStringSubmatch(string(src), -1)
	if len(declared) < 20 {
		t.Fatalf("found %d close codes in disconnect.go: the pattern no longer matches its declarations", len(declared))
	}
	for _, m := range declared {
		if !strings.Contains(string(doc), "\n| "+m[1]+" | ") {
			t.Errorf("close code %s (gateway/disconnect.go) is not in PROTOCOL.md's table", m[1])
		}
	}
}

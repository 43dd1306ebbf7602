package main

// Browser tests of the packaged client (web/cometgate.mjs, the
// last-resort transports htmlfile and jsonp, the buffering-proxy
// fallback), with the harness of browser_test.go.

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/chromedp/chromedp"
)

// TestBrowserESModule: import("/cometgate.mjs") gives the CometGate that
// cometgate.js defines (named and default export, the same object as the
// global), a client made from it receives, and a page of another origin
// can import the module from the gateway.
func TestBrowserESModule(t *testing.T) {
	n := startNode(t)
	b := newTab(t)
	// A same-origin document without the client in it.
	b.do(chromedp.Navigate(n.url("/style.css")))
	var got struct {
		Before string   `json:"before"`
		Named  string   `json:"named"`
		Same   bool     `json:"same"`
		Global bool     `json:"global"`
		Keys   []string `json:"keys"`
		Error  bool     `json:"error"`
	}
	b.eval(`(async () => {
	  const before = typeof CometGate;
	  const m = await import("/cometgate.mjs");
	  return { before, named: typeof m.CometGate, same: m.default === m.CometGate,
	    global: globalThis.CometGate === m.CometGate, keys: Object.keys(m).sort(),
	    error: typeof m.CometGate.Error === "function" && new m.CometGate.Error(503, "x") instanceof Error };
	})()`, &got)
	if got.Before != "undefined" || got.Named != "function" || !got.Same || !got.Global || !got.Error ||
		len(got.Keys) != 2 || got.Keys[0] != "CometGate" || got.Keys[1] != "default" {
		t.Fatalf("import(\"/cometgate.mjs\"): %+v", got)
	}
	b.eval(harnessT+` true`, nil)
	b.eval(`T.start({transports: ["websocket"]}, "demo.esm"), true`, nil)
	b.waitFor(`T.subscribed === 1 && T.cg.state === "connected"`, diagJS)
	publishMixed(t, n, "demo.esm", 0, 20)
	b.waitFor("T.msgs.length >= 20", diagJS)
	checkMixed(t, b.messages(), "demo.esm", 0, 20, true)

	// Another origin (another port) imports the module from the gateway:
	// module scripts load only with CORS.
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte("<!doctype html><title>another origin</title>"))
	}))
	t.Cleanup(other.Close)
	b.do(chromedp.Navigate(other.URL + "/"))
	var typ string
	b.eval(`import(`+strconv.Quote(n.url("/cometgate.mjs"))+`).then((m) => typeof m.CometGate)`, &typ)
	if typ != "function" {
		t.Fatalf("a page of another origin imports CometGate as %q", typ)
	}
	if p := b.problems(n.url("/favicon.ico"), other.URL+"/favicon.ico"); len(p) > 0 {
		t.Fatalf("console errors: %v", p)
	}
}

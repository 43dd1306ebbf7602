package web

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path"
	"regexp"
	"strings"
	"testing"
)

func get(t *testing.T, method, target string, header http.Header) *http.Response {
	t.Helper()
	req := httptest.NewRequest(method, target, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	Handler().ServeHTTP(rec, req)
	return rec.Result()
}

func body(t *testing.T, res *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestFSHasTheFiles(t *testing.T) {
	for _, name := range []string{"index.html", "ticker.html", "auction.html", "election.html", "demo.js", "cometgate.js", "cometgate.mjs", "cometgate.d.ts", "cometgate.d.mts", "client.html", "style.css"} {
		if _, err := fs.Stat(files, name); err != nil {
			t.Errorf("FS lacks %s: %v", name, err)
		}
	}
	matches, err := fs.Glob(files, "*.go")
	if err != nil || len(matches) != 0 {
		t.Errorf("FS exposes Go files %v (err %v)", matches, err)
	}
}

func TestHandlerServesIndexAtRoot(t *testing.T) {
	want, err := fs.ReadFile(files, "index.html")
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"/", "/index.html"} {
		res := get(t, http.MethodGet, target, nil)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: status %d", target, res.StatusCode)
		}
		if got := body(t, res); got != string(want) {
			t.Errorf("GET %s: body is not index.html", target)
		}
		checkHeaders(t, target, res, "text/html; charset=utf-8")
	}
}

func checkHeaders(t *testing.T, target string, res *http.Response, contentType string) {
	t.Helper()
	if got := res.Header.Get("Content-Type"); got != contentType {
		t.Errorf("GET %s: Content-Type %q, want %q", target, got, contentType)
	}
	if got := res.Header.Get("Cache-Control"); got != "no-cache" {
		t.Errorf("GET %s: Cache-Control %q, want no-cache", target, got)
	}
	if got := res.Header.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("GET %s: X-Content-Type-Options %q, want nosniff", target, got)
	}
	if res.Header.Get("ETag") == "" {
		t.Errorf("GET %s: no ETag", target)
	}
}

func TestHandlerContentTypes(t *testing.T) {
	for target, ct := range map[string]string{
		"/cometgate.js":    "text/javascript; charset=utf-8",
		"/cometgate.mjs":   "text/javascript; charset=utf-8",
		"/cometgate.d.ts":  "text/plain; charset=utf-8",
		"/cometgate.d.mts": "text/plain; charset=utf-8",
		"/style.css":       "text/css; charset=utf-8",
		"/ticker.html":     "text/html; charset=utf-8",
		"/auction.html":    "text/html; charset=utf-8",
	} {
		res := get(t, http.MethodGet, target, nil)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: status %d", target, res.StatusCode)
		}
		checkHeaders(t, target, res, ct)
		want, _ := fs.ReadFile(files, strings.TrimPrefix(target, "/"))
		if got := body(t, res); got != string(want) {
			t.Errorf("GET %s: body differs from the embedded file", target)
		}
	}
}

// TestHandlerCORS: the client's files load from pages of any origin (a
// module script needs CORS), the demo pages do not.
func TestHandlerCORS(t *testing.T) {
	for target, want := range map[string]string{
		"/cometgate.js": "*", "/cometgate.mjs": "*", "/cometgate.d.ts": "*",
		"/": "", "/ticker.html": "", "/style.css": "",
	} {
		res := get(t, http.MethodGet, target, http.Header{"Origin": {"https://app.example"}})
		if got := res.Header.Get("Access-Control-Allow-Origin"); got != want {
			t.Errorf("GET %s: Access-Control-Allow-Origin %q, want %q", target, got, want)
		}
		if got := res.Header.Get("Access-Control-Allow-Credentials"); got != "" {
			t.Errorf("GET %s: Access-Control-Allow-Credentials %q", target, got)
		}
	}
}

func TestHandlerNotFound(t *testing.T) {
	for _, target := range []string{
		"/nope.html", "/web.go", "/web_test.go", "/../go.mod", "/%2e%2e/go.mod",
		"/index.html/", "/sub/index.html", "/.", "//index.html", "/INDEX.HTML",
	} {
		res := get(t, http.MethodGet, target, nil)
		if res.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: status %d, want 404", target, res.StatusCode)
		}
		if got := res.Header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("GET %s: X-Content-Type-Options %q, want nosniff", target, got)
		}
	}
}

func TestHandlerMethods(t *testing.T) {
	res := get(t, http.MethodHead, "/cometgate.js", nil)
	if res.StatusCode != http.StatusOK || body(t, res) != "" {
		t.Errorf("HEAD: status %d, want 200 and no body", res.StatusCode)
	}
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		res := get(t, m, "/", nil)
		if res.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s /: status %d, want 405", m, res.StatusCode)
		}
		if got := res.Header.Get("Allow"); got != "GET, HEAD" {
			t.Errorf("%s /: Allow %q", m, got)
		}
	}
}

func TestHandlerRevalidates(t *testing.T) {
	etag := get(t, http.MethodGet, "/style.css", nil).Header.Get("ETag")
	res := get(t, http.MethodGet, "/style.css", http.Header{"If-None-Match": {etag}})
	if res.StatusCode != http.StatusNotModified {
		t.Errorf("conditional GET: status %d, want 304", res.StatusCode)
	}
	if other := get(t, http.MethodGet, "/cometgate.js", nil).Header.Get("ETag"); other == etag {
		t.Errorf("two different files share the ETag %s", etag)
	}
}

// attrRef matches src= and href= attribute values, quoted either way.
var attrRef = regexp.MustCompile(`(?i)\b(?:src|href)\s*=\s*(?:"([^"]*)"|'([^']*)')`)

// TestPagesReferenceExistingFiles checks every src= and href= of every page:
// local references must name an embedded file (the handler must serve it),
// and nothing may come from another host (the demos run offline).
func TestPagesReferenceExistingFiles(t *testing.T) {
	pages, err := fs.Glob(files, "*.html")
	if err != nil || len(pages) == 0 {
		t.Fatalf("no pages: %v", err)
	}
	scheme := regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)
	for _, page := range pages {
		html, err := fs.ReadFile(files, page)
		if err != nil {
			t.Fatal(err)
		}
		refs := attrRef.FindAllStringSubmatch(string(html), -1)
		if len(refs) == 0 {
			t.Errorf("%s: no src= or href= found", page)
		}
		for _, m := range refs {
			ref := m[1] + m[2]
			if strings.HasPrefix(ref, "#") {
				continue
			}
			if scheme.MatchString(ref) || strings.HasPrefix(ref, "//") {
				t.Errorf("%s: external reference %q", page, ref)
				continue
			}
			if i := strings.IndexAny(ref, "?#"); i >= 0 {
				ref = ref[:i]
			}
			target := path.Join("/", path.Dir("/"+page), ref)
			if strings.HasSuffix(ref, "/") || ref == "." || ref == "" {
				target = strings.TrimSuffix(target, "/") + "/"
			}
			name := strings.TrimPrefix(target, "/")
			if name == "" {
				name = "index.html"
			}
			if _, err := fs.Stat(files, name); err != nil {
				t.Errorf("%s: %q names %s, which is not in the FS", page, m[1]+m[2], name)
				continue
			}
			if res := get(t, http.MethodGet, target, nil); res.StatusCode != http.StatusOK {
				t.Errorf("%s: %q: GET %s gives %d", page, m[1]+m[2], target, res.StatusCode)
			}
		}
	}
}

// TestClientSyntax runs node --check on the client and its module when
// node is installed.
func TestClientSyntax(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node not installed")
	}
	for _, f := range []string{"cometgate.js", "cometgate.mjs"} {
		out, err := exec.Command(node, "--check", f).CombinedOutput()
		if err != nil {
			t.Fatalf("node --check %s: %v\n%s", f, err, out)
		}
	}
}

// Package web is the browser side of cometgate: the client library
// cometgate.js (it speaks wire protocol version 1, see package transports)
// with its ES module entry cometgate.mjs and its TypeScript declarations
// (cometgate.d.ts, cometgate.d.mts), the client's API reference
// (client.html), the landing page with a live console (index.html), the
// ticker, auction and election demos (ticker.html, auction.html,
// election.html, with what they share in demo.js), their stylesheet and
// icon. The application behind the demos, a plain broker client, is
// package web/demo; the screenshots folder holds the README's pictures of
// them and is not served.
//
// The files are embedded with go:embed so that the single cometgate binary
// serves the client and the demos with nothing else installed, and so that
// the client a page loads always matches the protocol of the server that
// serves it. They are hand-written and served exactly as they are in this
// folder: there is no build step, nothing generated or minified. The same
// files are the npm package (package.json), so a page that bundles the
// client runs the bytes the gateway serves.
package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"
)

//go:embed *.html *.js *.mjs *.ts *.mts *.css *.svg
var files embed.FS

// contentTypes fixes the types of the files we ship, independently of the
// host's mime tables.
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".mjs":  "text/javascript; charset=utf-8",
	".ts":   "text/plain; charset=utf-8",
	".mts":  "text/plain; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
}

type asset struct {
	body        []byte
	contentType string
	etag        string
	public      bool // the client's code: any origin may load it
}

// public reports whether a file is the client library or its types, which
// pages of any origin may load: a module script (and what it imports) from
// another origin loads only with CORS. They are the same public bytes for
// everyone and the response carries no credentials, so "*" is safe; the
// demo pages are not shared this way.
func public(name string) bool {
	return strings.HasPrefix(name, "cometgate.")
}

// assets reads every embedded file once: they are small, and an ETag lets
// browsers revalidate them cheaply despite Cache-Control: no-cache.
var assets = sync.OnceValue(func() map[string]asset {
	m := make(map[string]asset)
	err := fs.WalkDir(files, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := fs.ReadFile(files, name)
		if err != nil {
			return err
		}
		ext := path.Ext(name)
		ct, ok := contentTypes[ext]
		if !ok {
			ct = mime.TypeByExtension(ext)
		}
		if ct == "" {
			ct = "application/octet-stream"
		}
		sum := sha256.Sum256(body)
		m[name] = asset{body: body, contentType: ct, etag: `"` + hex.EncodeToString(sum[:12]) + `"`, public: public(name)}
		return nil
	})
	if err != nil {
		// The files are compiled in: failing to read them is a build defect.
		panic("web: reading embedded files: " + err.Error())
	}
	return m
})

// Handler serves the embedded files: "/" is index.html, "/NAME" is the file
// NAME, anything else is 404. Only GET and HEAD are allowed. Responses carry
// an explicit Content-Type, Cache-Control: no-cache (always revalidate, so a
// new server version is picked up at once) with an ETag, and
// X-Content-Type-Options: nosniff. The client's files (cometgate.js,
// cometgate.mjs and the declarations) also carry
// Access-Control-Allow-Origin: *, so that a page of another origin can
// import the module.
//
// Mount it at the root, or under a prefix with http.StripPrefix: the pages
// refer to each other and to their assets by relative URLs.
func Handler() http.Handler {
	a := assets()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			h.Set("Allow", "GET, HEAD")
			http.Error(w, http.StatusText(http.StatusMethodNotAllowed), http.StatusMethodNotAllowed)
			return
		}
		name := strings.TrimPrefix(r.URL.Path, "/")
		if name == "" {
			name = "index.html"
		}
		f, ok := a[name]
		if !ok {
			http.NotFound(w, r)
			return
		}
		h.Set("Content-Type", f.contentType)
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", f.etag)
		if f.public {
			h.Set("Access-Control-Allow-Origin", "*")
		}
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(f.body))
	})
}

package transports

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/cometgate/cometgate/gateway"
)

// The auth webhook: instead of a token, the node asks the application who
// a browser is. It calls the application's URL with the browser's cookies
// (and the headers configured), and the application answers with the
// principal as JSON of the shape of a token's claims:
//
//	{"sub":"alice","exp":1767225600,"cometgate":{"subscribe":["bids.*"],"publish":[]}}
//
// A 2xx with such a body admits the session as that principal; 401 or
// 403 refuses it (the application does not know the browser); anything
// else (a timeout, another status, a body that is not such JSON) refuses
// it too, with the reason: the webhook fails closed. Answers are cached
// per set of forwarded values for WebhookOptions.CacheTTL (refusals by the
// application as well; failures are not cached), so the requests of a
// session do not each cost a call.

// WebhookOptions configure the auth webhook (Options.Webhook).
type WebhookOptions struct {
	// URL is called with GET. Required.
	URL string
	// Headers are the request headers forwarded besides Cookie
	// (canonical names, e.g. "Authorization").
	Headers []string
	// Timeout bounds a call; 0 means 5 s.
	Timeout time.Duration
	// CacheTTL is how long an answer is reused; 0 means 30 s.
	CacheTTL time.Duration
	// Client makes the calls; nil means a client of its own.
	Client *http.Client
}

// webhookCacheMax bounds the answers held; past it, expired ones go, and
// if none has expired the cache starts again empty.
const webhookCacheMax = 10000

// maxWebhookBytes bounds an answer.
const maxWebhookBytes = 64 << 10

type webhookAnswer struct {
	p       *gateway.Principal // nil: refused
	reason  string
	denied  bool // the application refused (401, 403)
	expires time.Time
}

// webhook is the auth webhook of a gate. It is safe for concurrent use.
type webhook struct {
	opts WebhookOptions
	// revoked reports whether a revocation refuses a principal: a cached
	// answer it refuses is asked again (the application may vouch for
	// the browser anew, and the new answer is issued after the
	// revocation). nil: none is.
	revoked func(*gateway.Principal) bool

	mu    sync.Mutex
	cache map[[32]byte]webhookAnswer
}

func newWebhook(o WebhookOptions, revoked func(*gateway.Principal) bool) *webhook {
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.CacheTTL <= 0 {
		o.CacheTTL = 30 * time.Second
	}
	if o.Client == nil {
		o.Client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	return &webhook{opts: o, revoked: revoked, cache: make(map[[32]byte]webhookAnswer)}
}

// forwarded is what the call carries of r: its cookies and the headers
// configured, in a fixed order.
func (w *webhook) forwarded(r *http.Request) http.Header {
	h := http.Header{}
	for _, name := range append([]string{"Cookie"}, w.opts.Headers...) {
		if v := r.Header.Values(name); len(v) > 0 {
			h[http.CanonicalHeaderKey(name)] = v
		}
	}
	return h
}

// cacheKey is the digest of the forwarded values: the cache holds no
// cookie.
func cacheKey(h http.Header, names []string) [32]byte {
	d := sha256.New()
	for _, name := range append([]string{"Cookie"}, names...) {
		for _, v := range h.Values(name) {
			fmt.Fprintf(d, "%s:%d:%s\n", name, len(v), v)
		}
	}
	var k [32]byte
	d.Sum(k[:0])
	return k
}

// principal asks the application who r's browser is. It returns the
// principal, or the reason there is none, and denied when that is the
// application's answer (it does not know the browser) rather than a
// failure to get one.
func (w *webhook) principal(ctx context.Context, r *http.Request) (p *gateway.Principal, reason string, denied bool) {
	h := w.forwarded(r)
	key := cacheKey(h, w.opts.Headers)
	now := time.Now()
	w.mu.Lock()
	a, ok := w.cache[key]
	w.mu.Unlock()
	if ok && now.Before(a.expires) && (a.p == nil || ((a.p.Expires.IsZero() || now.Before(a.p.Expires)) && !w.refused(a.p))) {
		return a.p, a.reason, a.denied
	}
	p, reason, denied, keep := w.call(ctx, h)
	if keep {
		w.store(key, webhookAnswer{p: p, reason: reason, denied: denied, expires: now.Add(w.opts.CacheTTL)}, now)
	}
	return p, reason, denied
}

// refused reports whether a revocation refuses p.
func (w *webhook) refused(p *gateway.Principal) bool { return w.revoked != nil && w.revoked(p) }

func (w *webhook) store(key [32]byte, a webhookAnswer, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.cache) >= webhookCacheMax {
		for k, old := range w.cache {
			if !now.Before(old.expires) {
				delete(w.cache, k)
			}
		}
		if len(w.cache) >= webhookCacheMax {
			clear(w.cache)
		}
	}
	w.cache[key] = a
}

// call makes one call. keep says whether the answer is the application's
// (cached) rather than a failure to get one.
func (w *webhook) call(ctx context.Context, h http.Header) (p *gateway.Principal, reason string, denied, keep bool) {
	ctx, cancel := context.WithTimeout(ctx, w.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, w.opts.URL, nil)
	if err != nil {
		return nil, "auth webhook: " + err.Error(), false, false
	}
	req.Header = h
	req.Header.Set("Accept", "application/json")
	resp, err := w.opts.Client.Do(req)
	if err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			return nil, fmt.Sprintf("auth webhook: no answer within %s", w.opts.Timeout), false, false
		}
		// Not the error itself: it names the application's address.
		return nil, "auth webhook: the call failed", false, false
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return nil, fmt.Sprintf("auth webhook: the application refused (status %d)", resp.StatusCode), true, true
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		return nil, fmt.Sprintf("auth webhook: status %d", resp.StatusCode), false, false
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxWebhookBytes+1))
	switch {
	case err != nil:
		return nil, "auth webhook: reading the answer: " + err.Error(), false, false
	case len(body) > maxWebhookBytes:
		return nil, fmt.Sprintf("auth webhook: answer larger than %d bytes", maxWebhookBytes), false, false
	}
	p, err = gateway.ParseGrants(bytes.TrimSpace(body))
	if err != nil {
		return nil, "auth webhook: bad answer: " + err.Error(), false, false
	}
	return p, "", false, true
}

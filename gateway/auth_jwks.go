package gateway

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// A JWKS (RFC 7517) is the key set an identity provider publishes at a
// URL: the verifier holds the keys it fetched, refreshes them in the
// background, and fetches again at once (rate limited) when a token names
// a "kid" it does not hold, which is how a provider's key rotation shows.
// Keys stay usable for JWKSOptions.MaxAge after the last fetch that
// worked, so an outage of the provider does not log everybody out; past
// that, tokens that need them are refused with the reason (fail closed).

// JWKS defaults.
const (
	DefaultJWKSRefresh    = 10 * time.Minute
	DefaultJWKSMinRefetch = 30 * time.Second
	DefaultJWKSMaxAge     = 24 * time.Hour
	DefaultJWKSTimeout    = 5 * time.Second
	maxJWKSBytes          = 1 << 20
	minRSABits            = 2048
)

// JWKSOptions configure a JWKS.
type JWKSOptions struct {
	// URL is where the key set is fetched (GET, JSON). Required.
	URL string
	// Refresh is the time between two fetches; 0 means DefaultJWKSRefresh.
	Refresh time.Duration
	// MinRefetch is the least time between two fetches caused by tokens
	// naming an unknown "kid" (whoever sends tokens must not make the
	// node hammer the provider); 0 means DefaultJWKSMinRefetch.
	MinRefetch time.Duration
	// MaxAge is how long keys stay usable after the last fetch that
	// worked; 0 means DefaultJWKSMaxAge.
	MaxAge time.Duration
	// Timeout bounds one fetch; 0 means DefaultJWKSTimeout.
	Timeout time.Duration
	// Client fetches; nil means a client without proxy-from-environment
	// surprises: http.DefaultTransport's settings.
	Client *http.Client
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// jwksState is what the last fetches left: immutable once stored.
type jwksState struct {
	keys    []verifyKey
	fetched time.Time // of the last fetch that worked; zero: none yet
	err     error     // of the last fetch, nil when it worked
}

// JWKS holds a key set fetched from a URL. Its one goroutine (the
// fetcher) is owned by the JWKS and stopped by Close. All methods are
// safe for concurrent use.
type JWKS struct {
	opts  JWKSOptions
	log   *slog.Logger
	state atomic.Pointer[jwksState]

	kick   chan struct{} // asks the fetcher for a fetch now
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed sync.Once

	mu         sync.Mutex
	waiting    chan struct{} // closed when the fetch asked for since completes; nil: none asked
	lastDemand time.Time     // when a token last caused a fetch
}

// StartJWKS fetches the key set once (a failure is logged and kept as the
// reason tokens are refused, not returned: the provider may come back)
// and starts the fetcher. The caller owns the JWKS and closes it.
func StartJWKS(opts JWKSOptions) (*JWKS, error) {
	if opts.URL == "" {
		return nil, errors.New("gateway: jwks: a URL is required")
	}
	opts.Refresh = cmp.Or(opts.Refresh, DefaultJWKSRefresh)
	opts.MinRefetch = cmp.Or(opts.MinRefetch, DefaultJWKSMinRefetch)
	opts.MaxAge = cmp.Or(opts.MaxAge, DefaultJWKSMaxAge)
	opts.Timeout = cmp.Or(opts.Timeout, DefaultJWKSTimeout)
	if opts.Client == nil {
		opts.Client = &http.Client{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	j := &JWKS{opts: opts, log: cmp.Or(opts.Logger, slog.Default()), kick: make(chan struct{}, 1), cancel: cancel}
	j.state.Store(&jwksState{err: errors.New("not fetched yet")})
	j.fetch(ctx)
	j.wg.Add(1)
	go j.run(ctx)
	return j, nil
}

// Close stops the fetcher and waits for it. It is idempotent.
func (j *JWKS) Close() {
	j.closed.Do(func() {
		j.cancel()
		j.wg.Wait()
	})
}

// run is the fetcher: a fetch every Refresh, and one whenever asked.
func (j *JWKS) run(ctx context.Context) {
	defer j.wg.Done()
	t := time.NewTimer(j.opts.Refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			j.mu.Lock()
			if j.waiting != nil {
				close(j.waiting)
				j.waiting = nil
			}
			j.mu.Unlock()
			return
		case <-t.C:
		case <-j.kick:
		}
		// Who asks from now on waits for the next fetch, not this one:
		// it may have started before the key they need was published.
		j.mu.Lock()
		done := j.waiting
		j.waiting = nil
		j.mu.Unlock()
		j.fetch(ctx)
		if done != nil {
			close(done)
		}
		t.Reset(j.opts.Refresh)
	}
}

// fetch fetches the key set and stores what it got; a failure keeps the
// keys held and records why.
func (j *JWKS) fetch(ctx context.Context) {
	keys, err := j.get(ctx)
	old := j.state.Load()
	if err != nil {
		j.log.Warn("jwks: fetch failed; keeping the keys held", slog.String("url", j.opts.URL), slog.String("error", err.Error()),
			slog.Int("keys", len(old.keys)))
		j.state.Store(&jwksState{keys: old.keys, fetched: old.fetched, err: err})
		return
	}
	if len(old.keys) != len(keys) || old.err != nil {
		j.log.Info("jwks: fetched", slog.String("url", j.opts.URL), slog.Int("keys", len(keys)))
	}
	j.state.Store(&jwksState{keys: keys, fetched: time.Now()})
}

// get fetches and parses the key set.
func (j *JWKS) get(ctx context.Context) ([]verifyKey, error) {
	ctx, cancel := context.WithTimeout(ctx, j.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.opts.URL, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := j.opts.Client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxJWKSBytes {
		return nil, fmt.Errorf("key set larger than %d bytes", maxJWKSBytes)
	}
	keys, skipped, err := ParseJWKS(body)
	for _, s := range skipped {
		j.log.Warn("jwks: key skipped", slog.String("url", j.opts.URL), slog.String("reason", s))
	}
	return keys, err
}

// usable returns the keys that may verify tokens now, or why there are
// none.
func (j *JWKS) usable() ([]verifyKey, error) {
	st := j.state.Load()
	if st.fetched.IsZero() {
		return nil, fmt.Errorf("JWKS %s could not be fetched: %v", j.opts.URL, st.err)
	}
	if age := time.Since(st.fetched); age > j.opts.MaxAge {
		return nil, fmt.Errorf("JWKS %s could not be fetched for %s (last error: %v); the keys held are older than %s", j.opts.URL, age.Round(time.Second), st.err, j.opts.MaxAge)
	}
	return st.keys, nil
}

// refetch asks for a fetch because a token named a key not held, and
// waits for it (at most Timeout). It reports false when the rate limit
// allowed none.
func (j *JWKS) refetch() bool {
	j.mu.Lock()
	done := j.waiting
	if done == nil {
		if time.Since(j.lastDemand) < j.opts.MinRefetch {
			j.mu.Unlock()
			return false
		}
		j.lastDemand = time.Now()
		done = make(chan struct{})
		j.waiting = done
		select {
		case j.kick <- struct{}{}:
		default: // a kick is pending already
		}
	}
	j.mu.Unlock()
	t := time.NewTimer(j.opts.Timeout + time.Second)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// jwk is one key of a key set, the members cometgate reads.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	Crv string `json:"crv"`
	N   string `json:"n"`
	E   string `json:"e"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// ParseJWKS parses a key set: its RSA, EC (P-256, P-384, P-521) and OKP
// (Ed25519) signature keys. Keys it cannot use (symmetric keys, which a
// URL must not hand out, encryption keys, other types, malformed ones,
// RSA under 2048 bits, a "kid" seen twice) are skipped, each with the
// reason; a set without any usable key is an error.
func ParseJWKS(data []byte) (keys []verifyKey, skipped []string, err error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, nil, fmt.Errorf("not a key set: %w", err)
	}
	ids := make(map[string]bool)
	for i, raw := range set.Keys {
		var k jwk
		if err := json.Unmarshal(raw, &k); err != nil {
			skipped = append(skipped, fmt.Sprintf("key %d: %v", i, err))
			continue
		}
		vk, err := k.parse()
		switch {
		case err != nil:
			skipped = append(skipped, fmt.Sprintf("key %d (kid %q): %v", i, k.Kid, err))
			continue
		case ids[k.Kid]:
			skipped = append(skipped, fmt.Sprintf("key %d: kid %q seen twice", i, k.Kid))
			continue
		}
		ids[k.Kid] = true
		keys = append(keys, vk)
	}
	if len(keys) == 0 {
		return nil, skipped, fmt.Errorf("no usable key among %d", len(set.Keys))
	}
	return keys, skipped, nil
}

// parse turns k into a verification key.
func (k jwk) parse() (verifyKey, error) {
	if k.Use != "" && k.Use != "sig" {
		return verifyKey{}, fmt.Errorf("use %q is not sig", k.Use)
	}
	vk := VerificationKey{ID: k.Kid, Algorithm: k.Alg}
	switch k.Kty {
	case "RSA":
		n, err1 := b64Int(k.N)
		e, err2 := b64Int(k.E)
		if err := errors.Join(err1, err2); err != nil {
			return verifyKey{}, err
		}
		if n.BitLen() < minRSABits {
			return verifyKey{}, fmt.Errorf("RSA key of %d bits, under %d", n.BitLen(), minRSABits)
		}
		if !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 {
			return verifyKey{}, errors.New("RSA exponent out of range")
		}
		vk.PublicKey = &rsa.PublicKey{N: n, E: int(e.Int64())}
	case "EC":
		var c elliptic.Curve
		switch k.Crv {
		case "P-256":
			c = elliptic.P256()
		case "P-384":
			c = elliptic.P384()
		case "P-521":
			c = elliptic.P521()
		default:
			return verifyKey{}, fmt.Errorf("unsupported curve %q", k.Crv)
		}
		size := (c.Params().BitSize + 7) / 8
		x, err1 := base64.RawURLEncoding.DecodeString(k.X)
		y, err2 := base64.RawURLEncoding.DecodeString(k.Y)
		if err := errors.Join(err1, err2); err != nil || len(x) != size || len(y) != size {
			return verifyKey{}, errors.New("malformed EC point")
		}
		// Parsing the uncompressed point checks that it is on the curve.
		pub, err := ecdsa.ParseUncompressedPublicKey(c, append(append([]byte{4}, x...), y...))
		if err != nil {
			return verifyKey{}, err
		}
		vk.PublicKey = pub
	case "OKP":
		if k.Crv != "Ed25519" {
			return verifyKey{}, fmt.Errorf("unsupported curve %q", k.Crv)
		}
		x, err := base64.RawURLEncoding.DecodeString(k.X)
		if err != nil || len(x) != ed25519.PublicKeySize {
			return verifyKey{}, errors.New("malformed Ed25519 key")
		}
		vk.PublicKey = ed25519.PublicKey(x)
	case "oct":
		return verifyKey{}, errors.New("symmetric keys are not taken from a URL")
	default:
		return verifyKey{}, fmt.Errorf("unsupported key type %q", k.Kty)
	}
	return vk.parse()
}

// b64Int decodes a base64url big-endian unsigned integer.
func b64Int(s string) (*big.Int, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) == 0 {
		return nil, errors.New("malformed RSA key")
	}
	return new(big.Int).SetBytes(b), nil
}

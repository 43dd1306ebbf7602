package gateway

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var b64 = base64.RawURLEncoding

// jwkOf is pub as a JWK with kid (and alg, when not "").
func jwkOf(t testing.TB, kid, alg string, pub any) map[string]any {
	t.Helper()
	var k map[string]any
	switch p := pub.(type) {
	case *rsa.PublicKey:
		k = map[string]any{"kty": "RSA", "n": b64.EncodeToString(p.N.Bytes()), "e": b64.EncodeToString(big.NewInt(int64(p.E)).Bytes())}
	case *ecdsa.PublicKey:
		raw, err := p.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		size := (len(raw) - 1) / 2
		k = map[string]any{"kty": "EC", "crv": p.Curve.Params().Name, "x": b64.EncodeToString(raw[1 : 1+size]), "y": b64.EncodeToString(raw[1+size:])}
	case ed25519.PublicKey:
		k = map[string]any{"kty": "OKP", "crv": "Ed25519", "x": b64.EncodeToString(p)}
	default:
		t.Fatalf("jwkOf %T", pub)
	}
	k["kid"] = kid
	if alg != "" {
		k["alg"] = alg
	}
	k["use"] = "sig"
	return k
}

// jwksServer is a real HTTP server serving a key set the test changes.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	body    []byte
	status  int
	fetches atomic.Int64
	fetched chan struct{} // gets a value after each answer
}

func newJWKSServer(t *testing.T, keys ...map[string]any) *jwksServer {
	t.Helper()
	s := &jwksServer{status: http.StatusOK, fetched: make(chan struct{}, 100)}
	s.serve(keys...)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		status, body := s.status, s.body
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write(body)
		s.fetches.Add(1)
		select {
		case s.fetched <- struct{}{}:
		default:
		}
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) serve(keys ...map[string]any) {
	body, _ := json.Marshal(map[string]any{"keys": keys})
	s.mu.Lock()
	s.body, s.status = body, http.StatusOK
	s.mu.Unlock()
}

func (s *jwksServer) fail(status int) {
	s.mu.Lock()
	s.status = status
	s.mu.Unlock()
}

func startJWKS(t *testing.T, o JWKSOptions) *JWKS {
	t.Helper()
	j, err := StartJWKS(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(j.Close)
	return j
}

// TestJWKSVerifies: tokens signed with the RSA, ECDSA and Ed25519 keys a
// real server publishes are accepted by their kid; each key keeps its own
// algorithm.
func TestJWKSVerifies(t *testing.T) {
	rsaKey := testRSAKey()
	ec, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	edPub, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	srv := newJWKSServer(t, jwkOf(t, "r", "RS256", &rsaKey.PublicKey), jwkOf(t, "e", "", &ec.PublicKey), jwkOf(t, "d", "", edPub))
	j := startJWKS(t, JWKSOptions{URL: srv.URL, MinRefetch: time.Hour})
	v := newVerifier(t, TokenOptions{JWKS: j, RequireExpiry: true})
	c := aliceClaims(nil)
	for name, tok := range map[string]string{
		"RSA":     signKID(t, jwt.SigningMethodRS256, rsaKey, "r", c),
		"ECDSA":   signKID(t, jwt.SigningMethodES384, ec, "e", c),
		"Ed25519": signKID(t, jwt.SigningMethodEdDSA, edPriv, "d", c),
	} {
		p, err := v.Verify(tok)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		checkAlice(t, p, c)
	}
	refused := map[string]string{
		"PS256 on an RS256 key": signKID(t, jwt.SigningMethodPS256, rsaKey, "r", c),
		"HS256 on the RSA key":  signKID(t, jwt.SigningMethodHS256, rsaKey.PublicKey.N.Bytes(), "r", c),
		"no kid among 3 keys":   signKID(t, jwt.SigningMethodEdDSA, edPriv, "", c),
	}
	for name, tok := range refused {
		if _, err := v.Verify(tok); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if n := srv.fetches.Load(); n != 1 {
		t.Errorf("%d fetches, want 1 (the first; known kids need none)", n)
	}
}

// TestJWKSUnknownKID: a token naming a kid the set does not hold makes
// the set be fetched again at once, which is how a provider's rotation
// is seen; another unknown kid within MinRefetch fetches nothing.
func TestJWKSUnknownKID(t *testing.T) {
	_, oldPriv, _ := ed25519.GenerateKey(rand.Reader)
	oldPub := oldPriv.Public()
	newPub, newPriv, _ := ed25519.GenerateKey(rand.Reader)
	srv := newJWKSServer(t, jwkOf(t, "old", "", oldPub))
	j := startJWKS(t, JWKSOptions{URL: srv.URL, MinRefetch: time.Hour, Refresh: time.Hour})
	v := newVerifier(t, TokenOptions{JWKS: j})
	c := aliceClaims(nil)
	if _, err := v.Verify(signKID(t, jwt.SigningMethodEdDSA, oldPriv, "old", c)); err != nil {
		t.Fatalf("old key: %v", err)
	}
	srv.serve(jwkOf(t, "old", "", oldPub), jwkOf(t, "new", "", newPub))
	if _, err := v.Verify(signKID(t, jwt.SigningMethodEdDSA, newPriv, "new", c)); err != nil {
		t.Fatalf("new key after the provider rotated: %v", err)
	}
	if n := srv.fetches.Load(); n != 2 {
		t.Errorf("%d fetches, want 2", n)
	}
	_, err := v.Verify(signKID(t, jwt.SigningMethodEdDSA, newPriv, "forged", c))
	if !errors.Is(err, ErrUnknownKeyID) {
		t.Errorf("unknown kid: %v, want ErrUnknownKeyID", err)
	}
	if n := srv.fetches.Load(); n != 2 {
		t.Errorf("%d fetches after a second unknown kid within MinRefetch, want still 2", n)
	}
}

// TestJWKSRefresh: the fetcher fetches every Refresh by itself.
func TestJWKSRefresh(t *testing.T) {
	aPub, _, _ := ed25519.GenerateKey(rand.Reader)
	bPub, bPriv, _ := ed25519.GenerateKey(rand.Reader)
	srv := newJWKSServer(t, jwkOf(t, "a", "", aPub))
	j := startJWKS(t, JWKSOptions{URL: srv.URL, Refresh: 20 * time.Millisecond, MinRefetch: time.Hour})
	<-srv.fetched // the first fetch
	srv.serve(jwkOf(t, "a", "", aPub), jwkOf(t, "b", "", bPub))
	// Two fetches later the second set is held, whatever was in flight.
	for range 2 {
		select {
		case <-srv.fetched:
		case <-time.After(30 * time.Second):
			t.Fatal("no refresh")
		}
	}
	v := newVerifier(t, TokenOptions{JWKS: j})
	if _, err := v.Verify(signKID(t, jwt.SigningMethodEdDSA, bPriv, "b", aliceClaims(nil))); err != nil {
		t.Fatalf("key b after a refresh: %v", err)
	}
}

// TestJWKSFailsClosed: a set that cannot be fetched refuses tokens with
// the reason; keys fetched before stay usable for MaxAge, and not after.
func TestJWKSFailsClosed(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	srv := newJWKSServer(t, jwkOf(t, "k", "", pub))
	srv.fail(http.StatusInternalServerError)
	j := startJWKS(t, JWKSOptions{URL: srv.URL, Refresh: time.Hour, MinRefetch: time.Nanosecond, MaxAge: 300 * time.Millisecond})
	v := newVerifier(t, TokenOptions{JWKS: j})
	tok := signKID(t, jwt.SigningMethodEdDSA, priv, "k", aliceClaims(nil))
	_, err := v.Verify(tok)
	if err == nil || !strings.Contains(err.Error(), "could not be fetched: status 500") {
		t.Fatalf("nothing fetched: %v, want a refusal saying the set could not be fetched", err)
	}
	// The provider is back: the next token's unknown kid fetches it.
	srv.serve(jwkOf(t, "k", "", pub))
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("provider back: %v", err)
	}
	fetched := time.Now()
	// It fails again: the keys held verify until they are MaxAge old.
	srv.fail(http.StatusBadGateway)
	if _, err := v.Verify(tok); err != nil && time.Since(fetched) < 300*time.Millisecond {
		t.Fatalf("keys held, provider down: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := v.Verify(tok)
		if err != nil {
			if !strings.Contains(err.Error(), "older than 300ms") || !strings.Contains(err.Error(), "502") {
				t.Errorf("stale keys: %v, want it to say why", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("keys still used long after MaxAge")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestParseJWKS(t *testing.T) {
	rsaKey := testRSAKey()
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	offCurve := jwkOf(t, "off", "", &ec.PublicKey)
	offCurve["y"] = offCurve["x"]
	enc := jwkOf(t, "enc", "", edPub)
	enc["use"] = "enc"
	good := []map[string]any{jwkOf(t, "r", "", &rsaKey.PublicKey), jwkOf(t, "e", "", &ec.PublicKey), jwkOf(t, "d", "", edPub)}
	bad := []map[string]any{
		{"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
		enc,
		jwkOf(t, "small", "", &small.PublicKey),
		offCurve,
		jwkOf(t, "r", "", &rsaKey.PublicKey), // kid seen twice
		jwkOf(t, "alg", "HS256", edPub),
		{"kty": "OKP", "crv": "X25519", "kid": "x", "x": b64.EncodeToString(make([]byte, 32))},
	}
	data, _ := json.Marshal(map[string]any{"keys": append(good, bad...)})
	keys, skipped, err := ParseJWKS(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 3 || len(skipped) != len(bad) {
		t.Fatalf("%d keys, skipped %q", len(keys), skipped)
	}
	for i, want := range []string{"symmetric keys", `use "enc"`, "under 2048", "", "seen twice", "does not go with the key", "unsupported curve"} {
		if !strings.Contains(skipped[i], want) {
			t.Errorf("skipped[%d] = %q, want it to say %q", i, skipped[i], want)
		}
	}
	for _, body := range []string{`{"keys":[]}`, `[]`, `{"keys":[{"kty":"oct"}]}`, `not json`} {
		if _, _, err := ParseJWKS([]byte(body)); err == nil {
			t.Errorf("ParseJWKS(%s) accepted", body)
		}
	}
}

// FuzzParseJWKS: no key set makes the parser panic, and what it accepts
// has an algorithm for each key.
func FuzzParseJWKS(f *testing.F) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	for _, keys := range [][]map[string]any{
		{jwkOf(f, "r", "RS256", &testRSAKey().PublicKey)},
		{jwkOf(f, "e", "", &ec.PublicKey), jwkOf(f, "d", "", edPub)},
	} {
		data, _ := json.Marshal(map[string]any{"keys": keys})
		f.Add(data)
	}
	f.Add([]byte(`{"keys":[{"kty":"EC","crv":"P-256","x":"","y":""}]}`))
	f.Add([]byte(`{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, _, err := ParseJWKS(data)
		if err == nil && len(keys) == 0 {
			t.Fatal("no error and no keys")
		}
		for _, k := range keys {
			if len(k.algs) == 0 || k.key == nil {
				t.Fatalf("key %q without algorithm or key", k.id)
			}
		}
	})
}

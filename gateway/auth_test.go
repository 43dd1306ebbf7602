package gateway

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"hash"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/cometgate/cometgate/brokers"
)

// testSecret is a valid HMAC secret (32 bytes).
var testSecret = []byte("0123456789abcdef0123456789abcdef")

// testRSAKey is generated once: RSA key generation is slow under -race.
var testRSAKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

// publicPEM is pub as a "PUBLIC KEY" PEM block, what TokenOptions take.
func publicPEM(t testing.TB, pub crypto.PublicKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatalf("MarshalPKIXPublicKey: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func newVerifier(t testing.TB, o TokenOptions) *TokenVerifier {
	t.Helper()
	v, err := NewTokenVerifier(o)
	if err != nil {
		t.Fatalf("NewTokenVerifier: %v", err)
	}
	return v
}

// sign makes a token with method and key over claims.
func sign(t testing.TB, m jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(m, claims).SignedString(key)
	if err != nil {
		t.Fatalf("sign %s: %v", m.Alg(), err)
	}
	return s
}

// aliceClaims are valid claims for alice, expiring in an hour; mod, if
// set, changes them (a nil value deletes the claim).
func aliceClaims(mod map[string]any) jwt.MapClaims {
	now := time.Now()
	c := jwt.MapClaims{
		"sub": "alice",
		"iat": now.Unix(),
		"exp": now.Add(time.Hour).Unix(),
		ClaimName: map[string]any{
			"subscribe": []string{"bids.lot7", "prices.*"},
			"publish":   []string{"bids.lot7"},
		},
	}
	for k, v := range mod {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

// checkAlice checks p is the principal of aliceClaims.
func checkAlice(t *testing.T, p *Principal, claims jwt.MapClaims) {
	t.Helper()
	if p.Subject != "alice" {
		t.Errorf("subject %q", p.Subject)
	}
	if !slices.Equal(p.Subscribe, []string{"bids.lot7", "prices.*"}) || !slices.Equal(p.Publish, []string{"bids.lot7"}) {
		t.Errorf("grants: subscribe %q, publish %q", p.Subscribe, p.Publish)
	}
	if want := time.Unix(claims["exp"].(int64), 0); !p.Expires.Equal(want) {
		t.Errorf("Expires %v, want %v", p.Expires, want)
	}
}

func TestVerifyHMAC(t *testing.T) {
	v := newVerifier(t, TokenOptions{HMACSecret: testSecret})
	for _, m := range []jwt.SigningMethod{jwt.SigningMethodHS256, jwt.SigningMethodHS384, jwt.SigningMethodHS512} {
		t.Run(m.Alg(), func(t *testing.T) {
			c := aliceClaims(nil)
			p, err := v.Verify(sign(t, m, testSecret, c))
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			checkAlice(t, p, c)
		})
	}
	// Another secret's token is refused.
	other := []byte(strings.Repeat("x", 32))
	if _, err := v.Verify(sign(t, jwt.SigningMethodHS256, other, aliceClaims(nil))); !errors.Is(err, jwt.ErrTokenSignatureInvalid) {
		t.Errorf("token of another secret: err %v, want invalid signature", err)
	}
}

func TestVerifyPublicKeys(t *testing.T) {
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecOther, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edPub, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edOther, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaOther, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		method jwt.SigningMethod
		priv   any // signs
		other  any // a key of the same type the verifier does not know
		pub    crypto.PublicKey
	}{
		{jwt.SigningMethodRS256, testRSAKey(), rsaOther, &testRSAKey().PublicKey},
		{jwt.SigningMethodRS512, testRSAKey(), rsaOther, &testRSAKey().PublicKey},
		{jwt.SigningMethodPS256, testRSAKey(), rsaOther, &testRSAKey().PublicKey},
		{jwt.SigningMethodES256, ecKey, ecOther, &ecKey.PublicKey},
		{jwt.SigningMethodEdDSA, edKey, edOther, edPub},
	}
	for _, tt := range tests {
		t.Run(tt.method.Alg(), func(t *testing.T) {
			v := newVerifier(t, TokenOptions{PublicKeyPEM: publicPEM(t, tt.pub)})
			c := aliceClaims(nil)
			p, err := v.Verify(sign(t, tt.method, tt.priv, c))
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			checkAlice(t, p, c)
			if _, err := v.Verify(sign(t, tt.method, tt.other, c)); err == nil {
				t.Error("a token signed by another key was accepted")
			}
			// HMAC tokens never pass a public-key verifier, whatever the
			// secret.
			if _, err := v.Verify(sign(t, jwt.SigningMethodHS256, testSecret, c)); err == nil {
				t.Error("an HS256 token passed a public-key verifier")
			}
		})
	}
	// A key type verifies only its own algorithms: an ES256 token is
	// refused by an Ed25519 verifier and the other way round.
	edV := newVerifier(t, TokenOptions{PublicKeyPEM: publicPEM(t, edPub)})
	if _, err := edV.Verify(sign(t, jwt.SigningMethodES256, ecKey, aliceClaims(nil))); err == nil {
		t.Error("an ES256 token passed an Ed25519 verifier")
	}
	ecV := newVerifier(t, TokenOptions{PublicKeyPEM: publicPEM(t, &ecKey.PublicKey)})
	if _, err := ecV.Verify(sign(t, jwt.SigningMethodEdDSA, edKey, aliceClaims(nil))); err == nil {
		t.Error("an EdDSA token passed an ECDSA verifier")
	}
}

// noneToken is an unsigned token ("alg":"none") over claims.
func noneToken(t *testing.T, claims jwt.MapClaims) string {
	return sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims)
}

// tamper replaces the payload of token with claims, keeping its header
// and signature.
func tamper(t *testing.T, token string, claims jwt.MapClaims) string {
	t.Helper()
	parts := strings.Split(token, ".")
	forged := strings.Split(noneToken(t, claims), ".")
	return parts[0] + "." + forged[1] + "." + parts[2]
}

func TestVerifyRefuses(t *testing.T) {
	rsaPEM := publicPEM(t, &testRSAKey().PublicKey)
	hmacOpts := TokenOptions{HMACSecret: testSecret}
	rsaOpts := TokenOptions{PublicKeyPEM: rsaPEM}
	hs := func(mod map[string]any) string {
		return sign(t, jwt.SigningMethodHS256, testSecret, aliceClaims(mod))
	}
	now := time.Now()
	big := strings.Repeat("x", maxTokenBytes)
	tests := []struct {
		name  string
		opts  TokenOptions
		token string
		want  error // when not nil, the error must wrap it
	}{
		{"expired", hmacOpts, hs(map[string]any{"exp": now.Add(-time.Minute).Unix()}), jwt.ErrTokenExpired},
		{"expired beyond leeway", TokenOptions{HMACSecret: testSecret, Leeway: 30 * time.Second},
			hs(map[string]any{"exp": now.Add(-time.Minute).Unix()}), jwt.ErrTokenExpired},
		{"nbf in the future", hmacOpts, hs(map[string]any{"nbf": now.Add(time.Minute).Unix()}), jwt.ErrTokenNotValidYet},
		{"iat in the future", hmacOpts, hs(map[string]any{"iat": now.Add(time.Minute).Unix()}), jwt.ErrTokenUsedBeforeIssued},
		{"exp not a number", hmacOpts, hs(map[string]any{"exp": "tomorrow"}), nil},
		{"wrong issuer", TokenOptions{HMACSecret: testSecret, Issuer: "shop"}, hs(map[string]any{"iss": "evil"}), jwt.ErrTokenInvalidIssuer},
		{"no issuer", TokenOptions{HMACSecret: testSecret, Issuer: "shop"}, hs(nil), jwt.ErrTokenRequiredClaimMissing},
		{"wrong audience", TokenOptions{HMACSecret: testSecret, Audience: "cometgate"}, hs(map[string]any{"aud": []string{"billing", "mail"}}), jwt.ErrTokenInvalidAudience},
		{"no audience", TokenOptions{HMACSecret: testSecret, Audience: "cometgate"}, hs(nil), jwt.ErrTokenRequiredClaimMissing},
		{"alg none, HMAC verifier", hmacOpts, noneToken(t, aliceClaims(nil)), nil},
		{"alg none, RSA verifier", rsaOpts, noneToken(t, aliceClaims(nil)), nil},
		// Algorithm confusion: the attacker knows the public key and
		// signs HS256 with its PEM text as the HMAC secret.
		{"HS256 with the public key as secret", rsaOpts, sign(t, jwt.SigningMethodHS256, rsaPEM, aliceClaims(nil)), jwt.ErrTokenSignatureInvalid},
		{"RS256 against an HMAC verifier", hmacOpts, sign(t, jwt.SigningMethodRS256, testRSAKey(), aliceClaims(nil)), jwt.ErrTokenSignatureInvalid},
		{"no sub", hmacOpts, hs(map[string]any{"sub": nil}), nil},
		{"empty sub", hmacOpts, hs(map[string]any{"sub": ""}), nil},
		{"bad subscribe grant", hmacOpts, hs(map[string]any{ClaimName: map[string]any{"subscribe": []string{"ok.x", "a..b"}}}), nil},
		{"bad publish grant", hmacOpts, hs(map[string]any{ClaimName: map[string]any{"publish": []string{"a.>.b"}}}), nil},
		{"empty grant", hmacOpts, hs(map[string]any{ClaimName: map[string]any{"publish": []string{""}}}), nil},
		{"grants not a list", hmacOpts, hs(map[string]any{ClaimName: map[string]any{"subscribe": "prices.*"}}), nil},
		{"over 8 KiB", hmacOpts, hs(map[string]any{"pad": big}), nil},
		{"empty", hmacOpts, "", nil},
		{"garbage", hmacOpts, "not a token", nil},
		{"three dots", hmacOpts, "a.b.c", nil},
		{"two segments", hmacOpts, strings.Join(strings.Split(hs(nil), ".")[:2], "."), nil},
		{"tampered payload", hmacOpts, tamper(t, hs(nil), aliceClaims(map[string]any{"sub": "mallory"})), jwt.ErrTokenSignatureInvalid},
		{"tampered grants", rsaOpts, tamper(t, sign(t, jwt.SigningMethodRS256, testRSAKey(), aliceClaims(nil)),
			aliceClaims(map[string]any{ClaimName: map[string]any{"subscribe": []string{">"}}})), jwt.ErrTokenSignatureInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newVerifier(t, tt.opts)
			p, err := v.Verify(tt.token)
			if err == nil {
				t.Fatalf("accepted, principal %+v", p)
			}
			if p != nil {
				t.Errorf("refused with a principal %+v", p)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("err %v, want %v", err, tt.want)
			}
			if tt.token != "" && len(tt.token) < 200 && strings.Contains(err.Error(), tt.token) {
				t.Errorf("the error quotes the token: %v", err)
			}
		})
	}
}

// TestVerifyAccepts is the other side of TestVerifyRefuses: the same
// checks pass when the claims are right, so the refusals are for the
// reason the test names.
func TestVerifyAccepts(t *testing.T) {
	now := time.Now()
	hs := func(mod map[string]any) string {
		return sign(t, jwt.SigningMethodHS256, testSecret, aliceClaims(mod))
	}
	// The largest padding that keeps the token within the limit.
	base := len(hs(map[string]any{"pad": ""}))
	fits := hs(map[string]any{"pad": strings.Repeat("x", (maxTokenBytes-base)*3/4)})
	if len(fits) > maxTokenBytes || len(fits) < maxTokenBytes-8 {
		t.Fatalf("padding arithmetic: token of %d bytes", len(fits))
	}
	tests := []struct {
		name  string
		opts  TokenOptions
		token string
	}{
		{"expired within leeway", TokenOptions{HMACSecret: testSecret, Leeway: 2 * time.Minute},
			hs(map[string]any{"exp": now.Add(-time.Minute).Unix()})},
		{"nbf within leeway", TokenOptions{HMACSecret: testSecret, Leeway: 2 * time.Minute},
			hs(map[string]any{"nbf": now.Add(time.Minute).Unix()})},
		{"iat within leeway", TokenOptions{HMACSecret: testSecret, Leeway: 2 * time.Minute},
			hs(map[string]any{"iat": now.Add(time.Minute).Unix()})},
		{"nbf past", TokenOptions{HMACSecret: testSecret}, hs(map[string]any{"nbf": now.Add(-time.Minute).Unix()})},
		{"issuer", TokenOptions{HMACSecret: testSecret, Issuer: "shop"}, hs(map[string]any{"iss": "shop"})},
		{"audience string", TokenOptions{HMACSecret: testSecret, Audience: "cometgate"}, hs(map[string]any{"aud": "cometgate"})},
		{"audience among several", TokenOptions{HMACSecret: testSecret, Audience: "cometgate"}, hs(map[string]any{"aud": []string{"billing", "cometgate"}})},
		{"issuer and audience not checked when unset", TokenOptions{HMACSecret: testSecret}, hs(map[string]any{"iss": "any", "aud": "any"})},
		{"just within 8 KiB", TokenOptions{HMACSecret: testSecret}, fits},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := newVerifier(t, tt.opts).Verify(tt.token)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if p.Subject != "alice" {
				t.Errorf("subject %q", p.Subject)
			}
		})
	}
}

func TestVerifyNoGrantsNoExpiry(t *testing.T) {
	token := sign(t, jwt.SigningMethodHS256, testSecret, jwt.MapClaims{"sub": "bob"})
	p, err := newVerifier(t, TokenOptions{HMACSecret: testSecret}).Verify(token)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if p.Subject != "bob" || len(p.Subscribe) != 0 || len(p.Publish) != 0 || !p.Expires.IsZero() {
		t.Errorf("principal %+v, want bob with no grants and no expiry", p)
	}
	_, err = newVerifier(t, TokenOptions{HMACSecret: testSecret, RequireExpiry: true}).Verify(token)
	if !errors.Is(err, jwt.ErrTokenRequiredClaimMissing) {
		t.Errorf("RequireExpiry, token without exp: err %v", err)
	}
	withExp := sign(t, jwt.SigningMethodHS256, testSecret, aliceClaims(nil))
	if _, err := newVerifier(t, TokenOptions{HMACSecret: testSecret, RequireExpiry: true}).Verify(withExp); err != nil {
		t.Errorf("RequireExpiry, token with exp: %v", err)
	}
}

func TestNewTokenVerifierErrors(t *testing.T) {
	rsaPEM := publicPEM(t, &testRSAKey().PublicKey)
	x, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(testRSAKey())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		opts TokenOptions
		msg  string
	}{
		{"both", TokenOptions{HMACSecret: testSecret, PublicKeyPEM: rsaPEM}, "not both"},
		{"neither", TokenOptions{Issuer: "shop"}, "required"},
		{"short secret", TokenOptions{HMACSecret: testSecret[:31]}, "at least 32 bytes"},
		{"not PEM", TokenOptions{PublicKeyPEM: []byte("ssh-ed25519 AAAAC3Nza")}, "not PEM"},
		{"PEM of garbage", TokenOptions{PublicKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte("junk")})}, "public key"},
		{"private key", TokenOptions{PublicKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER})}, "public key"},
		{"X25519 key", TokenOptions{PublicKeyPEM: publicPEM(t, x.PublicKey())}, "unsupported public key type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := NewTokenVerifier(tt.opts)
			if err == nil || v != nil {
				t.Fatalf("NewTokenVerifier = %v, %v; want an error", v, err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("err %q, want it to say %q", err, tt.msg)
			}
		})
	}
	if _, err := NewTokenVerifier(TokenOptions{HMACSecret: testSecret}); err != nil {
		t.Errorf("a 32-byte secret: %v", err)
	}
}

func TestSignTokenRoundTrip(t *testing.T) {
	in := Principal{Subject: "alice", Subscribe: []string{"prices.>"}, Publish: []string{"bids.lot7", "chat.*"}}
	before := time.Now()
	token, err := SignToken(testSecret, in, "shop", "cometgate", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	v := newVerifier(t, TokenOptions{HMACSecret: testSecret, Issuer: "shop", Audience: "cometgate", RequireExpiry: true})
	p, err := v.Verify(token)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if p.Subject != in.Subject || !slices.Equal(p.Subscribe, in.Subscribe) || !slices.Equal(p.Publish, in.Publish) {
		t.Errorf("round trip: %+v, want %+v", p, in)
	}
	// "exp" has whole seconds.
	lo, hi := before.Add(10*time.Minute).Truncate(time.Second), after.Add(10*time.Minute)
	if p.Expires.Before(lo) || p.Expires.After(hi) {
		t.Errorf("Expires %v, want within [%v, %v]", p.Expires, lo, hi)
	}

	if _, err := newVerifier(t, TokenOptions{HMACSecret: testSecret, Audience: "other"}).Verify(token); !errors.Is(err, jwt.ErrTokenInvalidAudience) {
		t.Errorf("another audience: %v", err)
	}
	if _, err := newVerifier(t, TokenOptions{HMACSecret: testSecret, Issuer: "other"}).Verify(token); !errors.Is(err, jwt.ErrTokenInvalidIssuer) {
		t.Errorf("another issuer: %v", err)
	}
	other := []byte(strings.Repeat("s", 32))
	if _, err := newVerifier(t, TokenOptions{HMACSecret: other}).Verify(token); err == nil {
		t.Error("verified with another secret")
	}

	// Without issuer and audience the claims are absent, so a verifier
	// that wants them refuses the token.
	bare, err := SignToken(testSecret, Principal{Subject: "bob"}, "", "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := newVerifier(t, TokenOptions{HMACSecret: testSecret}).Verify(bare); err != nil || p.Subject != "bob" || len(p.Subscribe)+len(p.Publish) != 0 {
		t.Errorf("bare token: %+v, %v", p, err)
	}
	if _, err := v.Verify(bare); err == nil {
		t.Error("a token without issuer and audience passed a verifier that wants them")
	}
	expired, err := SignToken(testSecret, in, "shop", "cometgate", -time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(expired); !errors.Is(err, jwt.ErrTokenExpired) {
		t.Errorf("negative ttl: %v", err)
	}
}

// tokenRules have Token namespaces next to Anyone and Nobody ones.
func tokenRules() Rules {
	return Rules{
		{Pattern: "prices.>", Subscribe: Token, Publish: Token},
		{Pattern: "t.secret.>", Subscribe: Token}, // publish: Nobody
		{Pattern: "t.>", Subscribe: Anyone, Publish: Anyone},
		{Pattern: "ro.>", Subscribe: Anyone, Publish: Nobody},
		{Pattern: "closed.>", Subscribe: Nobody, Publish: Nobody},
	}
}

var (
	starP   = &Principal{Subject: "star", Subscribe: []string{"prices.*"}, Publish: []string{"prices.*"}}
	tailP   = &Principal{Subject: "tail", Subscribe: []string{"prices.>"}}
	exactP  = &Principal{Subject: "exact", Subscribe: []string{"prices.AAPL"}, Publish: []string{"prices.AAPL"}}
	pubP    = &Principal{Subject: "pub", Publish: []string{"prices.>"}}
	secretP = &Principal{Subject: "secret", Subscribe: []string{"t.secret.>"}}
	wideP   = &Principal{Subject: "wide", Subscribe: []string{"t.>"}}
	allP    = &Principal{Subject: "all", Subscribe: []string{">"}, Publish: []string{">"}}
	noneP   = &Principal{Subject: "none"}
)

func TestRulesTokenForSubscribe(t *testing.T) {
	rules := tokenRules()
	tests := []struct {
		pattern string
		p       *Principal
		want    string // governing namespace, "" for denied
	}{
		{"prices.AAPL", nil, ""},
		{"prices.AAPL", noneP, ""},
		{"prices.AAPL", pubP, ""}, // publish grants do not let it subscribe
		{"prices.AAPL", starP, "prices.>"},
		{"prices.a.b", starP, ""},
		{"prices.*", starP, "prices.>"},
		{"prices.>", starP, ""}, // the grant must cover the whole subscription
		{"prices.*.x", starP, ""},
		{"prices.AAPL", tailP, "prices.>"},
		{"prices.a.b", tailP, "prices.>"},
		{"prices.>", tailP, "prices.>"},
		{"prices.AAPL", exactP, "prices.>"},
		{"prices.MSFT", exactP, ""},
		{"prices.*", exactP, ""},
		{">", allP, ""}, // no namespace covers ">"
		{"prices.>", allP, "prices.>"},
		// An earlier, narrower Token namespace inside a later Anyone one.
		{"t.x", nil, "t.>"},
		{"t.*", nil, "t.>"}, // cannot reach t.secret.x (three tokens)
		{"t.>", nil, ""},
		{"t.*.x", nil, ""},
		{"t.secret.x", nil, ""},
		{"t.secret.x", secretP, "t.secret.>"},
		{"t.secret.>", secretP, "t.secret.>"},
		{"t.x", secretP, "t.>"},
		// Conservative: the principal may read t.secret.> and anyone the
		// rest, but the grant must cover the whole subscription.
		{"t.>", secretP, ""},
		{"t.>", wideP, "t.>"},
		{"t.*.x", wideP, "t.>"},
		{"t.secret.x", wideP, "t.secret.>"},
		// Anyone and Nobody do not look at grants.
		{"ro.x", nil, "ro.>"},
		{"ro.>", starP, "ro.>"},
		{"closed.x", nil, ""},
		{"closed.x", allP, ""},
		{"nowhere.x", allP, ""},
	}
	for _, tt := range tests {
		name := "anonymous"
		if tt.p != nil {
			name = tt.p.Subject
		}
		got := rules.ForSubscribe(tt.pattern, tt.p)
		switch {
		case tt.want == "" && got != nil:
			t.Errorf("ForSubscribe(%q, %s) = %q, want denied", tt.pattern, name, got.Pattern)
		case tt.want != "" && got == nil:
			t.Errorf("ForSubscribe(%q, %s) denied, want %q", tt.pattern, name, tt.want)
		case tt.want != "" && got.Pattern != tt.want:
			t.Errorf("ForSubscribe(%q, %s) = %q, want %q", tt.pattern, name, got.Pattern, tt.want)
		}
	}
}

func TestRulesTokenMayPublish(t *testing.T) {
	rules := tokenRules()
	tests := []struct {
		channel string
		p       *Principal
		want    bool
	}{
		{"prices.AAPL", nil, false},
		{"prices.AAPL", noneP, false},
		{"prices.AAPL", tailP, false}, // subscribe grants do not let it publish
		{"prices.AAPL", starP, true},
		{"prices.a.b", starP, false},
		{"prices.a.b", pubP, true},
		{"prices.AAPL", exactP, true},
		{"prices.MSFT", exactP, false},
		{"prices.AAPL", allP, true},
		{"t.secret.x", allP, false}, // a Token namespace whose publish is Nobody
		{"t.x", nil, true},
		{"ro.x", allP, false},
		{"closed.x", allP, false},
		{"nowhere.x", allP, false},
	}
	for _, tt := range tests {
		name := "anonymous"
		if tt.p != nil {
			name = tt.p.Subject
		}
		if got := rules.MayPublish(tt.channel, tt.p); got != tt.want {
			t.Errorf("MayPublish(%q, %s) = %v, want %v", tt.channel, name, got, tt.want)
		}
	}
}

// openAs opens a session acting for p with a persistent fake downstream
// and reads its hello.
func openAs(t *testing.T, g *testGateway, p *Principal) (*Session, *fakeTransport) {
	t.Helper()
	s, tr := openWith(t, g, OpenOptions{Transport: "fake", Principal: p})
	if s.Principal() != p {
		t.Fatalf("Principal() = %v, want %v", s.Principal(), p)
	}
	return s, tr
}

func TestSessionTokenPermissions(t *testing.T) {
	g := newTestGateway(t, func(c *Config) { c.Rules = tokenRules() })
	// Through a real token, as a transport would do it.
	token, err := SignToken(testSecret, Principal{
		Subject:   "alice",
		Subscribe: []string{"prices.*"},
		Publish:   []string{"prices.x.bids"}, // none of its subscriptions: no echo
	}, "", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	alice, err := newVerifier(t, TokenOptions{HMACSecret: testSecret}).Verify(token)
	if err != nil {
		t.Fatal(err)
	}
	s, tr := openAs(t, g, alice)
	subscribe(t, s, tr, 1, "prices.AAPL")
	subscribe(t, s, tr, 2, "prices.*")
	send(s, `{"op":"sub","id":3,"ch":"prices.>"}`)
	expectErr(t, tr, 3, 403, "permission denied")
	send(s, `{"op":"sub","id":4,"ch":"prices.a.b"}`)
	expectErr(t, tr, 4, 403, "permission denied")
	send(s, `{"op":"sub","id":5,"ch":"t.secret.x"}`)
	expectErr(t, tr, 5, 403, "permission denied")
	subscribe(t, s, tr, 6, "t.x") // Anyone

	send(s, `{"op":"pub","id":10,"ch":"prices.x.bids","text":"120"}`)
	if w := nextType(t, tr, TypeOK); w.ID != 10 || w.Ch != "prices.x.bids" {
		t.Fatalf("publish ok = %s", w)
	}
	// Subscribe grants do not let it publish.
	send(s, `{"op":"pub","id":11,"ch":"prices.AAPL","text":"1"}`)
	expectErr(t, tr, 11, 403, "permission denied")
	send(s, `{"op":"pub","id":12,"ch":"ro.x","text":"1"}`)
	expectErr(t, tr, 12, 403, "permission denied")
	if pubs := g.b.Published(); len(pubs) != 1 || pubs[0].Channel != "prices.x.bids" {
		t.Errorf("broker got %+v, want the one allowed publication", pubs)
	}
	// The allowed subscriptions deliver.
	publish(t, g.b, "prices.AAPL", `"190.5"`)
	for range 2 { // prices.AAPL and prices.*
		if w := nextType(t, tr, TypeMsg); w.Ch != "prices.AAPL" {
			t.Errorf("message %s", w)
		}
	}

	anon, atr := openAs(t, g, nil)
	send(anon, `{"op":"sub","id":1,"ch":"prices.AAPL"}`)
	expectErr(t, atr, 1, 403, "permission denied")
	send(anon, `{"op":"pub","id":2,"ch":"prices.x.bids","text":"1"}`)
	expectErr(t, atr, 2, 403, "permission denied")
	send(anon, `{"op":"sub","id":3,"ch":"t.>"}`) // reaches t.secret.>
	expectErr(t, atr, 3, 403, "permission denied")
	subscribe(t, anon, atr, 4, "t.x")
	noPacket(t, atr)
	if isDone(s) || isDone(anon) {
		t.Error("a refused request ended a session")
	}
}

func TestSessionTokenExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newTestGateway(t, func(c *Config) { c.Rules = tokenRules() })
		token, err := SignToken(testSecret, Principal{Subject: "alice", Subscribe: []string{"prices.>"}}, "", "", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		p, err := newVerifier(t, TokenOptions{HMACSecret: testSecret}).Verify(token)
		if err != nil {
			t.Fatal(err)
		}
		s, tr := openAs(t, g, p)
		subscribe(t, s, tr, 1, "prices.AAPL")

		time.Sleep(time.Until(p.Expires) - time.Millisecond)
		synctest.Wait()
		if isDone(s) {
			t.Fatal("the session ended before its token expired")
		}
		ping(t, s, tr, 2)
		time.Sleep(2 * time.Millisecond)
		synctest.Wait()
		if !isDone(s) {
			t.Fatal("the session outlived its token")
		}
		if s.Reason() != DisconnectTokenExpired || !s.Reason().Reconnect() {
			t.Errorf("reason %v, want %v", s.Reason(), DisconnectTokenExpired)
		}
		expectClose(t, tr, DisconnectTokenExpired)
		if n := g.b.Subs(); n != 0 {
			t.Errorf("%d broker subscriptions left", n)
		}

		// Without "exp" the session is not timed.
		forever, ftr := openAs(t, g, &Principal{Subject: "bob"})
		time.Sleep(48 * time.Hour)
		synctest.Wait()
		if isDone(forever) {
			t.Errorf("a session without token expiry ended: %v", forever.Reason())
		}
		ping(t, forever, ftr, 1)

		// A session closed before its token expires keeps its reason.
		early, _ := openAs(t, g, &Principal{Subject: "carol", Expires: time.Now().Add(time.Minute)})
		early.Close(DisconnectGone())
		waitDone(t, early)
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		if early.Reason() != DisconnectGone() {
			t.Errorf("reason %v after the token's expiry, want %v", early.Reason(), DisconnectGone())
		}

		// A principal already expired (accepted within leeway) ends at once.
		late, err := g.Open(OpenOptions{Transport: "fake", Principal: &Principal{Subject: "dave", Expires: time.Now().Add(-time.Second)}})
		if err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if !isDone(late) || late.Reason() != DisconnectTokenExpired {
			t.Errorf("an expired principal's session: done %v, reason %v", isDone(late), late.Reason())
		}
	})
}

// fuzzEdSeed makes the fuzzer's Ed25519 key the same on every run.
var fuzzEdSeed = []byte("cometgate fuzz ed25519 key seed.")

// signedBy reports whether token's signature is a valid HMAC (any of
// SHA-256/384/512) under secret or a valid Ed25519 signature under pub,
// checked here without the jwt package.
func signedBy(token string, secret []byte, pub ed25519.PublicKey) bool {
	i := strings.LastIndexByte(token, '.')
	if i < 0 {
		return false
	}
	input, sig := token[:i], token[i+1:]
	raw, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil {
		return false
	}
	for _, h := range []func() hash.Hash{sha256.New, sha512.New384, sha512.New} {
		mac := hmac.New(h, secret)
		mac.Write([]byte(input))
		if hmac.Equal(mac.Sum(nil), raw) {
			return true
		}
	}
	return ed25519.Verify(pub, []byte(input), raw)
}

func FuzzVerify(f *testing.F) {
	edKey := ed25519.NewKeyFromSeed(fuzzEdSeed)
	edPub := edKey.Public().(ed25519.PublicKey)
	verifiers := []*TokenVerifier{
		newVerifier(f, TokenOptions{HMACSecret: testSecret}),
		newVerifier(f, TokenOptions{PublicKeyPEM: publicPEM(f, edPub)}),
	}
	claims := jwt.MapClaims{
		"sub": "alice",
		"exp": time.Now().Add(24 * time.Hour).Unix(),
		ClaimName: map[string]any{
			"subscribe": []string{"prices.*"},
			"publish":   []string{"bids.lot7"},
		},
	}
	valid := []string{
		sign(f, jwt.SigningMethodHS256, testSecret, claims),
		sign(f, jwt.SigningMethodHS512, testSecret, claims),
		sign(f, jwt.SigningMethodEdDSA, edKey, claims),
	}
	for _, tok := range valid {
		f.Add(tok)
		parts := strings.Split(tok, ".")
		f.Add(tok[:len(tok)-1])                           // truncated signature
		f.Add(tok + "A")                                  // longer signature
		f.Add(parts[0] + "." + parts[1] + ".")            // no signature
		f.Add(parts[1] + "." + parts[0] + "." + parts[2]) // header and payload swapped
		f.Add(strings.ToUpper(tok))
		f.Add(tok + "." + parts[2])
	}
	f.Add(sign(f, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims))
	f.Add(sign(f, jwt.SigningMethodHS256, []byte(strings.Repeat("k", 32)), claims))
	f.Add(sign(f, jwt.SigningMethodHS256, testSecret, jwt.MapClaims{"sub": "", "exp": 1e300}))
	f.Add(sign(f, jwt.SigningMethodHS256, testSecret, jwt.MapClaims{"sub": "x", ClaimName: map[string]any{"subscribe": []string{"a..b"}}}))
	f.Add("")
	f.Add("..")
	f.Add("eyJhbGciOiJIUzI1NiJ9.e30.")
	f.Fuzz(func(t *testing.T, token string) {
		for _, v := range verifiers {
			p, err := v.Verify(token)
			if err != nil {
				if p != nil {
					t.Fatalf("refused with a principal: %v", err)
				}
				continue
			}
			if !signedBy(token, testSecret, edPub) {
				t.Fatalf("accepted a token the key did not sign: %q", token)
			}
			if len(token) > maxTokenBytes {
				t.Fatalf("accepted a token of %d bytes", len(token))
			}
			if p.Subject == "" {
				t.Fatalf("accepted a token without a subject: %q", token)
			}
			for _, g := range append(slices.Clone(p.Subscribe), p.Publish...) {
				if err := brokers.ValidatePattern(g); err != nil {
					t.Fatalf("accepted an invalid grant %q", g)
				}
			}
		}
	})
}

// TestVerifyExpiresWithLeeway: a principal's Expires is the token's exp
// plus the leeway, the moment the verifier starts refusing the token, so
// a session is not closed while its token would still be accepted.
func TestVerifyExpiresWithLeeway(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	v, err := NewTokenVerifier(TokenOptions{HMACSecret: secret, Leeway: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := SignToken(secret, Principal{Subject: "a"}, "", "", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	p, err := v.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(p.Expires); d < 35*time.Second || d > 41*time.Second {
		t.Errorf("Expires in %s, want exp (10 s) plus the 30 s leeway", d)
	}
}

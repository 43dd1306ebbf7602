package gateway

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

// signKID makes a token with method, key and the header "kid" (none when
// kid is "").
func signKID(t testing.TB, m jwt.SigningMethod, key any, kid string, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatalf("sign %s: %v", m.Alg(), err)
	}
	return s
}

func TestVerifyKeyRotation(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edPub, edPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey := testRSAKey()
	other := []byte(strings.Repeat("o", 32))
	v := newVerifier(t, TokenOptions{Keys: []VerificationKey{
		{ID: "old", HMACSecret: testSecret},
		{ID: "new", HMACSecret: other},
		{ID: "rsa", PublicKeyPEM: publicPEM(t, &rsaKey.PublicKey), Algorithm: "RS256"},
		{ID: "ec", PublicKey: &ec.PublicKey},
		{ID: "ed", PublicKeyPEM: publicPEM(t, edPub)},
	}})
	c := aliceClaims(nil)
	accepted := []struct {
		name  string
		token string
	}{
		{"old secret", signKID(t, jwt.SigningMethodHS256, testSecret, "old", c)},
		{"new secret", signKID(t, jwt.SigningMethodHS512, other, "new", c)},
		{"RSA", signKID(t, jwt.SigningMethodRS256, rsaKey, "rsa", c)},
		{"ECDSA P-256", signKID(t, jwt.SigningMethodES256, ec, "ec", c)},
		{"Ed25519", signKID(t, jwt.SigningMethodEdDSA, edPriv, "ed", c)},
	}
	for _, tt := range accepted {
		p, err := v.Verify(tt.token)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		checkAlice(t, p, c)
	}
	refused := []struct {
		name  string
		token string
		want  error
		msg   string
	}{
		{"kid of another key", signKID(t, jwt.SigningMethodHS256, testSecret, "new", c), jwt.ErrTokenSignatureInvalid, ""},
		{"unknown kid", signKID(t, jwt.SigningMethodHS256, testSecret, "retired", c), ErrUnknownKeyID, `"retired"`},
		{"no kid among several keys", signKID(t, jwt.SigningMethodHS256, testSecret, "", c), nil, `no "kid" and 5 keys`},
		// The key's type fixes the algorithm: the RSA key's PEM as an
		// HMAC secret, an algorithm the key was narrowed away from, and
		// an ECDSA algorithm of another curve.
		{"HS256 with the RSA key's PEM", signKID(t, jwt.SigningMethodHS256, publicPEM(t, &rsaKey.PublicKey), "rsa", c), jwt.ErrTokenSignatureInvalid, "does not go with key"},
		{"PS256 on an RS256 key", signKID(t, jwt.SigningMethodPS256, rsaKey, "rsa", c), jwt.ErrTokenSignatureInvalid, "does not go with key"},
		{"HS256 on the Ed25519 key", signKID(t, jwt.SigningMethodHS256, []byte(edPub), "ed", c), jwt.ErrTokenSignatureInvalid, "does not go with key"},
		{"alg none", noneToken(t, c), nil, ""},
	}
	for _, tt := range refused {
		p, err := v.Verify(tt.token)
		if err == nil {
			t.Errorf("%s: accepted as %+v", tt.name, p)
			continue
		}
		if tt.want != nil && !errors.Is(err, tt.want) {
			t.Errorf("%s: err %v, want %v", tt.name, err, tt.want)
		}
		if !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("%s: err %q, want it to say %q", tt.name, err, tt.msg)
		}
	}
}

// TestVerifyKeyWithoutKID: a token without "kid" is verified when one key
// is configured, with or without an id; a single key without an id takes
// any "kid" (the set-up before rotation).
func TestVerifyKeyWithoutKID(t *testing.T) {
	c := aliceClaims(nil)
	one := newVerifier(t, TokenOptions{Keys: []VerificationKey{{ID: "k1", HMACSecret: testSecret}}})
	if _, err := one.Verify(signKID(t, jwt.SigningMethodHS256, testSecret, "", c)); err != nil {
		t.Errorf("one key with an id, token without kid: %v", err)
	}
	if _, err := one.Verify(signKID(t, jwt.SigningMethodHS256, testSecret, "k2", c)); !errors.Is(err, ErrUnknownKeyID) {
		t.Errorf("one key with an id, token with another kid: %v, want ErrUnknownKeyID", err)
	}
	legacy := newVerifier(t, TokenOptions{HMACSecret: testSecret})
	if _, err := legacy.Verify(signKID(t, jwt.SigningMethodHS256, testSecret, "anything", c)); err != nil {
		t.Errorf("single key without id, token with a kid: %v", err)
	}
}

func TestVerificationKeyErrors(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		keys []VerificationKey
		msg  string
	}{
		{"duplicate id", []VerificationKey{{ID: "a", HMACSecret: testSecret}, {ID: "a", HMACSecret: testSecret}}, `"a" is listed twice`},
		{"missing id among several", []VerificationKey{{ID: "a", HMACSecret: testSecret}, {HMACSecret: testSecret}}, "each needs an id"},
		{"no key material", []VerificationKey{{ID: "a"}}, "one HMAC secret or one public key"},
		{"two kinds", []VerificationKey{{ID: "a", HMACSecret: testSecret, PublicKey: &ec.PublicKey}}, "one HMAC secret or one public key"},
		{"algorithm of another type", []VerificationKey{{ID: "a", HMACSecret: testSecret, Algorithm: "RS256"}}, `algorithm "RS256" does not go with the key`},
		{"unsupported curve", []VerificationKey{{ID: "a", PublicKey: &ec.PublicKey}}, "unsupported ECDSA curve"},
		{"short secret", []VerificationKey{{ID: "a", HMACSecret: testSecret[:8]}}, `key "a": the HMAC secret must be at least 32 bytes`},
	}
	for _, tt := range tests {
		v, err := NewTokenVerifier(TokenOptions{Keys: tt.keys})
		if err == nil {
			t.Errorf("%s: accepted (%v)", tt.name, v)
			continue
		}
		if !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("%s: err %q, want it to say %q", tt.name, err, tt.msg)
		}
	}
}

package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/cometgate/cometgate/brokers"
)

// Authentication: a session may act for a principal, the subject of a
// token the application signed (a JWT). The token grants channel patterns
// in its "cometgate" claim:
//
//	{"sub":"alice","exp":1767225600,
//	 "cometgate":{"subscribe":["bids.lot7","prices.*"],"publish":["bids.lot7"],"tcp":["chat"]}}
//
// A namespace whose permission is Token lets a session subscribe to (or
// publish on) what its principal's grants cover, and nobody else. The
// gateway never issues tokens to browsers: the application does, after its
// own login, so cometgate needs no user database and no session store.
// A session ends when its token expires (DisconnectTokenExpired: the
// client reconnects with a fresh token).

// ClaimName is the JWT claim that holds cometgate's grants.
const ClaimName = "cometgate"

// Principal is who a session acts for.
type Principal struct {
	// Subject is the token's "sub": the user, as the application names it.
	Subject string
	// Subscribe and Publish are the channel patterns the token grants.
	Subscribe []string
	Publish   []string
	// TCP names the TCP bridge targets the token grants (for targets that
	// need a token).
	TCP []string
	// Expires is when the session must end: the token's "exp" plus the
	// verifier's leeway (the moment the verifier starts refusing the
	// token, so that a client reconnecting with the same token is not
	// let in and closed again at once); the zero time when it has none.
	Expires time.Time
	// IssuedAt is when the credential was issued: the token's "iat", the
	// time of an auth webhook's answer; the zero time when unknown. A
	// revocation refuses credentials issued at or before it (revoke.go).
	IssuedAt time.Time
}

// covers reports whether one of grants covers pattern.
func covers(grants []string, pattern string) bool {
	for _, g := range grants {
		if brokers.PatternCovers(g, pattern) {
			return true
		}
	}
	return false
}

// mayDo reports whether perm lets principal p (nil: anonymous) act on
// pattern, with grants the principal's list for that action.
func mayDo(perm Permission, p *Principal, grants func(*Principal) []string, pattern string) bool {
	switch perm {
	case Anyone:
		return true
	case Token:
		return p != nil && covers(grants(p), pattern)
	}
	return false
}

func subscribeGrants(p *Principal) []string { return p.Subscribe }
func publishGrants(p *Principal) []string   { return p.Publish }

// TokenOptions configure a TokenVerifier: the keys tokens may be signed
// with (Keys, or the single key of HMACSecret or PublicKeyPEM, or a JWKS
// the verifier keeps fetched), and the checks on their claims.
type TokenOptions struct {
	// HMACSecret verifies HS256, HS384 and HS512 tokens. At least 32 bytes.
	// It is the same as one entry of Keys without an ID.
	HMACSecret []byte
	// PublicKeyPEM verifies RS*, PS*, ES* or EdDSA tokens, by the key type:
	// an RSA, ECDSA or Ed25519 public key ("PUBLIC KEY" PEM block). It is
	// the same as one entry of Keys without an ID.
	PublicKeyPEM []byte
	// Keys are verification keys with their "kid" (rotation: the
	// application signs with the newest, the gateway accepts all listed).
	// See Verify for how a token's "kid" picks one.
	Keys []VerificationKey
	// JWKS, when set, is a key set fetched from a URL whose keys the
	// verifier uses too (after Keys). The caller owns it and closes it
	// after the verifier's last use.
	JWKS *JWKS
	// Issuer and Audience, when set, must be the token's "iss" and one of
	// its "aud".
	Issuer   string
	Audience string
	// Leeway tolerates clock skew on "exp", "nbf" and "iat".
	Leeway time.Duration
	// RequireExpiry refuses tokens without "exp".
	RequireExpiry bool
}

// TokenVerifier checks tokens and turns them into principals. It is safe
// for concurrent use.
type TokenVerifier struct {
	keys   []verifyKey // the configured keys
	jwks   *JWKS       // nil: none
	leeway time.Duration
	parser *jwt.Parser
}

// NewTokenVerifier checks the options and builds a verifier.
func NewTokenVerifier(o TokenOptions) (*TokenVerifier, error) {
	if len(o.HMACSecret) > 0 && len(o.PublicKeyPEM) > 0 {
		return nil, errors.New("gateway: tokens: set either an HMAC secret or a public key, not both")
	}
	all := o.Keys
	if len(o.HMACSecret) > 0 || len(o.PublicKeyPEM) > 0 {
		all = append([]VerificationKey{{HMACSecret: o.HMACSecret, PublicKeyPEM: o.PublicKeyPEM}}, all...)
	}
	if len(all) == 0 && o.JWKS == nil {
		return nil, errors.New("gateway: tokens: an HMAC secret, a public key, keys or a JWKS is required")
	}
	keys := make([]verifyKey, 0, len(all))
	ids := make(map[string]bool)
	for i, k := range all {
		vk, err := k.parse()
		if err != nil {
			if k.ID != "" {
				return nil, fmt.Errorf("gateway: tokens: key %q: %w", k.ID, err)
			}
			if len(all) > 1 {
				return nil, fmt.Errorf("gateway: tokens: key %d: %w", i, err)
			}
			return nil, fmt.Errorf("gateway: tokens: %w", err)
		}
		if ids[k.ID] {
			if k.ID == "" {
				return nil, errors.New("gateway: tokens: with several keys, each needs an id (the tokens' \"kid\")")
			}
			return nil, fmt.Errorf("gateway: tokens: key id %q is listed twice", k.ID)
		}
		ids[k.ID] = true
		keys = append(keys, vk)
	}
	if len(keys) > 1 && ids[""] {
		return nil, errors.New("gateway: tokens: with several keys, each needs an id (the tokens' \"kid\")")
	}
	// Every algorithm some key type has; each key then accepts only its
	// own (keyFor), so that no token picks how its key is used.
	opts := []jwt.ParserOption{jwt.WithValidMethods(allAlgorithms), jwt.WithLeeway(o.Leeway), jwt.WithIssuedAt()}
	if o.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(o.Issuer))
	}
	if o.Audience != "" {
		opts = append(opts, jwt.WithAudience(o.Audience))
	}
	if o.RequireExpiry {
		opts = append(opts, jwt.WithExpirationRequired())
	}
	return &TokenVerifier{keys: keys, jwks: o.JWKS, leeway: o.Leeway, parser: jwt.NewParser(opts...)}, nil
}

// tokenClaims are the claims cometgate reads.
type tokenClaims struct {
	jwt.RegisteredClaims
	Grants *grantClaim `json:"cometgate"`
}

// grantClaim is the "cometgate" claim.
type grantClaim struct {
	Subscribe []string `json:"subscribe"`
	Publish   []string `json:"publish"`
	TCP       []string `json:"tcp,omitempty"`
}

// MayBridge reports whether p (nil: anonymous) is granted the TCP bridge
// target called name.
func (p *Principal) MayBridge(name string) bool {
	if p == nil {
		return false
	}
	for _, t := range p.TCP {
		if t == name {
			return true
		}
	}
	return false
}

// maxTokenBytes bounds a token before any parsing.
const maxTokenBytes = 8 << 10

// Verify checks token's signature, algorithm, expiry, issuer and audience
// and returns its principal. The key is the one whose ID is the token's
// "kid"; a token without "kid" is verified only when the verifier holds
// exactly one key (there is no trying one key after another); a single key
// configured without an ID verifies every token, whatever its "kid" (the
// set-up of one key, before rotation). The key's type fixes the
// algorithm: an HMAC secret verifies only HS*, an RSA key only RS*/PS*,
// and so on, whatever the token's "alg" says. A token without a subject,
// or whose grants are not valid patterns, is refused. The error says why,
// without the token.
func (v *TokenVerifier) Verify(token string) (*Principal, error) {
	if len(token) > maxTokenBytes {
		return nil, fmt.Errorf("token longer than %d bytes", maxTokenBytes)
	}
	var c tokenClaims
	_, err := v.parser.ParseWithClaims(token, &c, v.keyFor)
	if err != nil {
		return nil, err
	}
	return principalOf(&c, v.leeway, "token")
}

// principalOf is the principal of claims c, checked: a subject, grants
// that are valid patterns; its expiry with the leeway. what names where
// the claims came from, in errors.
func principalOf(c *tokenClaims, leeway time.Duration, what string) (*Principal, error) {
	if c.Subject == "" {
		return nil, fmt.Errorf(`%s has no "sub"`, what)
	}
	p := &Principal{Subject: c.Subject}
	if c.ExpiresAt != nil {
		p.Expires = c.ExpiresAt.Add(leeway)
	}
	if c.IssuedAt != nil {
		p.IssuedAt = c.IssuedAt.Time
	}
	if c.Grants != nil {
		for _, list := range [][]string{c.Grants.Subscribe, c.Grants.Publish} {
			for _, g := range list {
				if err := brokers.ValidatePattern(g); err != nil {
					return nil, fmt.Errorf("%s grant %q: %w", what, g, err)
				}
			}
		}
		p.Subscribe, p.Publish, p.TCP = c.Grants.Subscribe, c.Grants.Publish, c.Grants.TCP
	}
	return p, nil
}

// ParseGrants reads a principal from JSON of the shape of a token's
// claims, {"sub":…,"exp":…,"cometgate":{…}} (what an auth webhook
// answers), with the checks Verify makes of a token's claims: a subject,
// valid patterns, an "exp" not past (when there is one). The principal
// is issued now, whatever "iat" says: the application vouched for it in
// this answer, so a revocation refuses it only once made after.
func ParseGrants(data []byte) (*Principal, error) {
	var c tokenClaims
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, err
	}
	p, err := principalOf(&c, 0, "the answer")
	if err != nil {
		return nil, err
	}
	p.IssuedAt = time.Now()
	if !p.Expires.IsZero() && !p.IssuedAt.Before(p.Expires) {
		return nil, errors.New(`the answer's "exp" is past`)
	}
	return p, nil
}

// SignToken makes an HS256 token for p, valid for ttl, with issuer and
// audience when they are not "": what "cometgate token" prints, for tests
// and for applications that sign with a shared secret.
func SignToken(secret []byte, p Principal, issuer, audience string, ttl time.Duration) (string, error) {
	return SignTokenKID(secret, "", p, issuer, audience, ttl)
}

// SignTokenKID is SignToken with the header "kid" (none when kid is ""):
// the id of the key among a verifier's Keys.
func SignTokenKID(secret []byte, kid string, p Principal, issuer, audience string, ttl time.Duration) (string, error) {
	now := time.Now()
	c := tokenClaims{RegisteredClaims: jwt.RegisteredClaims{
		Subject:   p.Subject,
		Issuer:    issuer,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}}
	if audience != "" {
		c.Audience = jwt.ClaimStrings{audience}
	}
	c.Grants = &grantClaim{Subscribe: p.Subscribe, Publish: p.Publish, TCP: p.TCP}
	t := jwt.NewWithClaims(jwt.SigningMethodHS256, c)
	if kid != "" {
		t.Header["kid"] = kid
	}
	return t.SignedString(secret)
}

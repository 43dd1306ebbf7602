package brokers

import "strings"

// The helpers below compare channel patterns in the contract's syntax
// (dot-separated tokens, "*" one token, ">" one or more trailing tokens).
// They do not validate: the arguments must be valid patterns (a concrete
// channel is a valid pattern without wildcards). They allocate nothing.

// PatternCovers reports whether every channel matched by pattern p is also
// matched by pattern ns: "a.>" covers "a.b", "a.*" and "a.b.>"; "a.*"
// covers "a.b" but not "a.>" or "a.b.c".
func PatternCovers(ns, p string) bool {
	for {
		nt, nrest, nmore := strings.Cut(ns, ".")
		pt, prest, pmore := strings.Cut(p, ".")
		switch nt {
		case ">":
			return true // p has at least one token left here
		case "*":
			if pt == ">" {
				return false
			}
		default:
			if pt != nt {
				return false
			}
		}
		if nmore != pmore {
			return false
		}
		if !nmore {
			return true
		}
		ns, p = nrest, prest
	}
}

// MatchChannel reports whether the concrete channel ch matches pattern p.
func MatchChannel(p, ch string) bool {
	return PatternCovers(p, ch)
}

// PatternsOverlap reports whether some channel matches both patterns a
// and b: "a.*" and "*.b" overlap (both match "a.b"); "a.*" and "a.b.>" do
// not.
func PatternsOverlap(a, b string) bool {
	for {
		at, arest, amore := strings.Cut(a, ".")
		bt, brest, bmore := strings.Cut(b, ".")
		if at == ">" || bt == ">" {
			// Both have a token here; ">" takes it and anything after.
			return true
		}
		if at != "*" && bt != "*" && at != bt {
			return false
		}
		if amore != bmore {
			return false
		}
		if !amore {
			return true
		}
		a, b = arest, brest
	}
}

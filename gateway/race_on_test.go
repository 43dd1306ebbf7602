//go:build race

package gateway

// raceEnabled: the race detector is on (it allocates for its own
// bookkeeping, so allocation counts are not checked then).
const raceEnabled = true

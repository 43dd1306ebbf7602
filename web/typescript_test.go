package web

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// typescriptVersion is the TypeScript the declarations are checked with,
// pinned so that a run checks what the last one did.
const typescriptVersion = "5.9.3"

// tscFlags are the compiler options of both checks. nodenext resolves
// "../cometgate.mjs" to cometgate.d.mts and "../cometgate.js" to
// cometgate.d.ts, as Node and bundlers do; legacy module detection keeps
// script.ts a script, so that it sees the global CometGate a <script> tag
// defines.
var tscFlags = []string{"--strict", "--noEmit", "--pretty", "false", "--target", "es2020",
	"--module", "nodenext", "--moduleDetection", "legacy", "--lib", "es2020,dom"}

// tsc installs TypeScript from npm into the repository's ignored
// .ci/tmp (once per checkout) and returns the path of its tsc.
func tsc(t *testing.T) string {
	t.Helper()
	npm, err := exec.LookPath("npm")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("TypeScript check: npm is not installed (.ci/services.sh installs node and npm)")
		}
		t.Skip("TypeScript check: npm is not installed (apt-get install nodejs npm)")
	}
	dir, err := filepath.Abs(filepath.Join("..", ".ci", "tmp", "typescript-"+typescriptVersion))
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "node_modules", "typescript", "bin", "tsc")
	if _, err := os.Stat(bin); err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, npm, "install", "--prefix", dir, "--no-audit", "--no-fund", "--no-package-lock",
			"typescript@"+typescriptVersion)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm install typescript@%s: %v\n%s", typescriptVersion, err, out)
		}
	}
	return bin
}

// runTSC runs tsc on files (in this folder) and returns its output and
// whether it passed.
func runTSC(t *testing.T, bin string, files ...string) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "node", append(append([]string{bin}, tscFlags...), files...)...).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("tsc timed out: %s", out)
	}
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("running tsc: %v", err)
	}
	return string(out), err == nil
}

// tsError is the line of a tsc diagnostic in examples/wrong.ts.
var tsError = regexp.MustCompile(`(?m)^examples/wrong\.ts\((\d+),\d+\): error (TS\d+)`)

// TestTypeScript checks cometgate.d.ts and cometgate.d.mts with tsc
// --strict: the examples that use the whole API through the global, the
// ES module and CommonJS compile, and every line of examples/wrong.ts
// marked "wrong" is refused (and no other line is), so declarations that
// accept anything fail the test as surely as declarations that refuse
// correct code.
func TestTypeScript(t *testing.T) {
	bin := tsc(t)
	if out, ok := runTSC(t, bin, "examples/script.ts", "examples/module.mts", "examples/require.cts", "cometgate.d.ts"); !ok {
		t.Fatalf("tsc refuses the examples:\n%s", out)
	}

	src, err := os.ReadFile(filepath.Join("examples", "wrong.ts"))
	if err != nil {
		t.Fatal(err)
	}
	var want []int
	for i, line := range strings.Split(string(src), "\n") {
		if strings.Contains(line, "// wrong:") {
			want = append(want, i+1)
		}
	}
	if len(want) < 10 {
		t.Fatalf("examples/wrong.ts marks %d wrong lines", len(want))
	}
	out, ok := runTSC(t, bin, "examples/wrong.ts", "cometgate.d.ts")
	if ok {
		t.Fatalf("tsc accepts examples/wrong.ts:\n%s", out)
	}
	var got []int
	for _, m := range tsError.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[1])
		if !slices.Contains(got, n) {
			got = append(got, n)
		}
	}
	for _, n := range want {
		if !slices.Contains(got, n) {
			t.Errorf("examples/wrong.ts:%d is accepted: the declarations let that mistake through", n)
		}
	}
	for _, n := range got {
		if !slices.Contains(want, n) {
			t.Errorf("examples/wrong.ts:%d is refused but not marked wrong", n)
		}
	}
	if t.Failed() {
		t.Logf("tsc:\n%s", out)
	}
}

package web

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// pkgJSON is what TestPackage reads of package.json.
type pkgJSON struct {
	Name    string                     `json:"name"`
	Version string                     `json:"version"`
	License string                     `json:"license"`
	Main    string                     `json:"main"`
	Module  string                     `json:"module"`
	Types   string                     `json:"types"`
	Exports map[string]json.RawMessage `json:"exports"`
	Files   []string                   `json:"files"`
}

// TestPackage checks that web/ is an npm package ready to publish: every
// file package.json names exists, and the client's files are the ones
// the gateway serves (the package and the gateway ship the same bytes), the license is the
// repository's, and, where node and npm are installed, npm packs exactly
// those files and Node resolves the package by name both ways to the one
// CometGate.
func TestPackage(t *testing.T) {
	raw, err := os.ReadFile("package.json")
	if err != nil {
		t.Fatal(err)
	}
	var p pkgJSON
	if err := json.Unmarshal(raw, &p); err != nil {
		t.Fatalf("package.json: %v", err)
	}
	if p.Name != "cometgate" || !regexp.MustCompile(`^\d+\.\d+\.\d+$`).MatchString(p.Version) {
		t.Errorf("package.json: name %q version %q", p.Name, p.Version)
	}
	license, err := os.ReadFile("../LICENSE")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(license, []byte(p.License+" License")) {
		t.Errorf("package.json says license %q; LICENSE starts %q", p.License, license[:min(len(license), 40)])
	}
	// npm packs only files inside the package folder: web/LICENSE is a
	// copy of the repository's, and must stay one.
	if own, err := os.ReadFile("LICENSE"); err != nil || !bytes.Equal(own, license) {
		t.Errorf("web/LICENSE differs from LICENSE (err %v): copy it again", err)
	}
	var dot struct {
		Import  map[string]string `json:"import"`
		Require map[string]string `json:"require"`
	}
	if err := json.Unmarshal(p.Exports["."], &dot); err != nil {
		t.Fatalf(`package.json: exports["."]: %v`, err)
	}
	named := []string{p.Main, p.Module, p.Types, dot.Import["types"], dot.Import["default"],
		dot.Require["types"], dot.Require["default"]}
	for _, f := range named {
		name := strings.TrimPrefix(f, "./")
		if name == "" || !slices.Contains(p.Files, name) {
			t.Errorf("package.json names %q, which is not in its files", f)
			continue
		}
	}
	for _, name := range p.Files {
		if _, err := os.Stat(name); err != nil {
			t.Errorf("package.json files: %v", err)
		}
		if name == "LICENSE" || name == "README.md" {
			continue // the package's own, not the gateway's
		}
		if _, err := fs.Stat(files, name); err != nil {
			t.Errorf("package.json files: %s is not served by the gateway: %v", name, err)
		}
	}

	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Skip("the npm half of the package check: npm is not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, npm, "pack", "--dry-run", "--json").Output()
	if err != nil {
		t.Fatalf("npm pack --dry-run: %v", err)
	}
	var packs []struct {
		Files []struct {
			Path string `json:"path"`
		} `json:"files"`
	}
	if err := json.Unmarshal(out, &packs); err != nil || len(packs) != 1 {
		t.Fatalf("npm pack --dry-run --json: %v\n%s", err, out)
	}
	var packed []string
	for _, f := range packs[0].Files {
		packed = append(packed, f.Path)
	}
	want := append(slices.Clone(p.Files), "package.json")
	slices.Sort(packed)
	slices.Sort(want)
	if !slices.Equal(packed, want) {
		t.Errorf("npm packs %v, want %v", packed, want)
	}

	// Node resolves the package by its own name (a package may import
	// itself): require and import give the same class, which the module
	// also leaves on globalThis.
	const resolve = `import { CometGate } from "cometgate";
import Default from "cometgate";
import { createRequire } from "node:module";
const required = createRequire(import.meta.url)("cometgate");
if (typeof CometGate !== "function" || Default !== CometGate || required !== CometGate || globalThis.CometGate !== CometGate) {
  throw new Error("cometgate resolves to different objects");
}
if (typeof CometGate.Error !== "function" || typeof CometGate.TCPSocket !== "function" || CometGate.PROTOCOL_VERSION !== 1) {
  throw new Error("CometGate lacks its statics");
}
console.log("ok");`
	out, err = exec.CommandContext(ctx, "node", "--input-type=module", "-e", resolve).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("node: %v\n%s", err, out)
	}
}

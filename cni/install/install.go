// Package install puts the Strait CNI plugin on a node: it copies the
// plugin binary into the host's CNI bin directory atomically and chains
// the plugin at the end of the primary CNI configuration (the file the
// kubelet uses: the first *.conf or *.conflist in the directory, by
// name), keeps it there when the primary CNI rewrites its file, and
// removes both cleanly on uninstall. It never imports client-go.
package install

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"
)

// PluginType is the plugin's "type" in the chain and its binary's name.
const PluginType = "strait-cni"

// ErrNoPrimary means the configuration directory holds no CNI config yet
// (the primary CNI has not written it): wait and retry.
var ErrNoPrimary = errors.New("no primary CNI configuration")

// Config says where things go.
type Config struct {
	// BinDir is the host's CNI bin directory (/opt/cni/bin).
	BinDir string
	// ConfDir is the host's CNI configuration directory (/etc/cni/net.d).
	ConfDir string
	// Binary is the plugin binary to copy (empty: copy nothing).
	Binary string
	// Plugin is the plugin's configuration in the chain, besides "type"
	// (e.g. the agent socket, fail-open).
	Plugin map[string]any
}

// Primary returns the path of the configuration the kubelet uses.
func Primary(confDir string) (string, error) {
	entries, err := os.ReadDir(confDir)
	if err != nil {
		return "", fmt.Errorf("install: %w", err)
	}
	var names []string
	for _, e := range entries {
		n := e.Name()
		if !e.IsDir() && !strings.HasPrefix(n, ".") && (strings.HasSuffix(n, ".conflist") || strings.HasSuffix(n, ".conf") || strings.HasSuffix(n, ".json")) {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return "", fmt.Errorf("install: %s: %w", confDir, ErrNoPrimary)
	}
	sort.Strings(names)
	return filepath.Join(confDir, names[0]), nil
}

// Install copies the binary (if set) and chains the plugin into the
// primary configuration. It is idempotent; it reports whether it changed
// the configuration.
func Install(cfg Config) (bool, error) {
	if cfg.Binary != "" {
		if err := copyBinary(cfg.Binary, filepath.Join(cfg.BinDir, PluginType)); err != nil {
			return false, err
		}
	}
	return chain(cfg)
}

// chain inserts the plugin at the end of the primary conflist. A single
// plugin .conf is turned into a .conflist of the same name (and the .conf
// removed, so the kubelet keeps picking the same network).
func chain(cfg Config) (bool, error) {
	path, err := Primary(cfg.ConfDir)
	if err != nil {
		return false, err
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("install: %w", err)
	}
	list, err := parse(path, raw)
	if err != nil {
		return false, err
	}
	plugins, _ := list["plugins"].([]any)
	if idx := indexOf(plugins); idx >= 0 {
		if idx == len(plugins)-1 && sameConfig(plugins[idx], cfg.Plugin) && strings.HasSuffix(path, ".conflist") {
			return false, nil // already chained, last, current
		}
		plugins = slices.Delete(plugins, idx, idx+1)
	}
	p := map[string]any{"type": PluginType}
	for k, v := range cfg.Plugin {
		if k != "type" {
			p[k] = v
		}
	}
	list["plugins"] = append(plugins, p)
	out, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return false, fmt.Errorf("install: %w", err)
	}
	target := path
	if !strings.HasSuffix(path, ".conflist") {
		target = strings.TrimSuffix(path, filepath.Ext(path)) + ".conflist"
	}
	if err := writeAtomic(target, append(out, '\n'), 0o644); err != nil {
		return false, err
	}
	if target != path {
		if err := os.Remove(path); err != nil {
			return false, fmt.Errorf("install: %w", err)
		}
	}
	return true, nil
}

// parse reads a .conflist, or a .conf turned into a one-plugin list.
func parse(path string, raw []byte) (map[string]any, error) {
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("install: %s is not a CNI configuration: %w", path, err)
	}
	if ps, ok := m["plugins"]; ok {
		if _, ok := ps.([]any); !ok {
			return nil, fmt.Errorf("install: %s: \"plugins\" is not a list", path)
		}
		return m, nil
	}
	if _, ok := m["type"].(string); !ok {
		return nil, fmt.Errorf("install: %s: neither a plugin list nor a plugin (no \"plugins\", no \"type\")", path)
	}
	list := map[string]any{"cniVersion": m["cniVersion"], "name": m["name"]}
	plugin := map[string]any{}
	for k, v := range m {
		if k != "cniVersion" && k != "name" {
			plugin[k] = v
		}
	}
	list["plugins"] = []any{plugin}
	return list, nil
}

func indexOf(plugins []any) int {
	for i, p := range plugins {
		if m, ok := p.(map[string]any); ok && m["type"] == PluginType {
			return i
		}
	}
	return -1
}

func sameConfig(p any, want map[string]any) bool {
	m, _ := p.(map[string]any)
	w := map[string]any{"type": PluginType}
	for k, v := range want {
		w[k] = v
	}
	a, _ := json.Marshal(m)
	b, _ := json.Marshal(w)
	return bytes.Equal(a, b)
}

// Uninstall removes the plugin from the primary configuration and its
// binary from BinDir. Missing pieces are fine.
func Uninstall(cfg Config) error {
	path, err := Primary(cfg.ConfDir)
	if err == nil {
		raw, rerr := os.ReadFile(path)
		if rerr != nil {
			return fmt.Errorf("install: %w", rerr)
		}
		list, perr := parse(path, raw)
		if perr != nil {
			return perr
		}
		plugins, _ := list["plugins"].([]any)
		if idx := indexOf(plugins); idx >= 0 {
			list["plugins"] = slices.Delete(plugins, idx, idx+1)
			out, merr := json.MarshalIndent(list, "", "  ")
			if merr != nil {
				return fmt.Errorf("install: %w", merr)
			}
			if werr := writeAtomic(path, append(out, '\n'), 0o644); werr != nil {
				return werr
			}
		}
	} else if !errors.Is(err, ErrNoPrimary) {
		return err
	}
	if err := os.Remove(filepath.Join(cfg.BinDir, PluginType)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("install: %w", err)
	}
	return nil
}

// Watch keeps the plugin chained until ctx ends: every interval it checks
// the primary configuration and re-inserts the plugin when the primary
// CNI rewrote its file (or a new primary appeared). report, if set, is
// told each time: with the file it chained the plugin into, or with the
// error of an attempt (a file caught half-written by the primary CNI,
// say). Errors never stop the watch: the next tick tries again.
func Watch(ctx context.Context, cfg Config, interval time.Duration, report func(path string, err error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		changed, err := chain(cfg)
		switch {
		case errors.Is(err, ErrNoPrimary):
		case err != nil && report != nil:
			report("", err)
		case changed && report != nil:
			p, _ := Primary(cfg.ConfDir)
			report(p, nil)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// copyBinary copies src to dst through a temporary file in dst's
// directory and a rename, so the kubelet never runs half a binary.
func copyBinary(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	defer in.Close()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, in); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	return writeAtomic(dst, buf.Bytes(), 0o755)
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if err2 := f.Close(); err == nil {
		err = err2
	}
	if err == nil {
		err = os.Chmod(tmp, mode)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("install: write %s: %w", path, err)
	}
	return nil
}

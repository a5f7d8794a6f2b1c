package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/ecowatt/ecowatt/backend"
)

type provisioned struct {
	ID  string `json:"id"`
	Key string `json:"key"`
}

func deviceAdd(ctx context.Context, e env, args []string) error {
	k := newCall(e, "device add", "device add [ID | --count N --prefix P] [--label KEY=VALUE ...] [--keys-out FILE]", false)
	var labels labelFlags
	k.fs.Var(&labels, "label", "a label KEY=VALUE for every new device (repeat the flag for more)")
	count := k.fs.Int("count", 0, "provision this many devices named PREFIX-0001...")
	prefix := k.fs.String("prefix", "dev", "ID prefix with --count")
	keysOut := k.fs.String("keys-out", "", "merge the new keys into this JSON file {\"ID\":\"hexkey\"} (for devicesim)")
	pos, err := k.parse(args, 0, 1)
	if err != nil {
		return err
	}
	var ids []string
	switch {
	case *count > 0 && len(pos) == 0:
		for i := 1; i <= *count; i++ {
			ids = append(ids, fmt.Sprintf("%s-%04d", *prefix, i))
		}
	case *count == 0 && len(pos) == 1:
		ids = []string{pos[0]}
	default:
		return k.usage("give one ID, or --count N (with --prefix)")
	}
	if err := labels.err(); err != nil {
		return k.usage(err.Error())
	}
	keys := map[string]string{}
	if *keysOut != "" {
		if err := readKeys(*keysOut, keys); err != nil {
			return err
		}
	}
	start := time.Now()
	for i, id := range ids {
		var p provisioned
		if err := k.c.do(ctx, "POST", apiPath("devices"), provisionBody(id, labels), &p); err != nil {
			return fmt.Errorf("device add %s: %w", id, err)
		}
		keys[p.ID] = p.Key
		if *keysOut == "" {
			fmt.Fprintf(e.stdout, "%s %s\n", p.ID, p.Key)
		} else if len(ids) > 1 && (i+1)%100 == 0 {
			fmt.Fprintf(e.stderr, "\rprovisioned %d/%d", i+1, len(ids))
		}
	}
	if *keysOut != "" {
		if err := writeKeys(*keysOut, keys); err != nil {
			return err
		}
		fmt.Fprintf(e.stderr, "\rprovisioned %d device(s) in %s; keys in %s (keep it secret)\n", len(ids), time.Since(start).Round(time.Millisecond), *keysOut)
	}
	return nil
}

func readKeys(path string, into map[string]string) error {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read keys: %w", err)
	}
	if err := json.Unmarshal(b, &into); err != nil {
		return fmt.Errorf("read keys %s: %w", path, err)
	}
	return nil
}

func writeKeys(path string, keys map[string]string) error {
	b, err := json.MarshalIndent(keys, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write keys: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write keys: %w", err)
	}
	return nil
}

// printDevices draws the table of devices; -o json prints the documents whole.
func printDevices(w io.Writer, ds ...backend.Device) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tONLINE\tFIRMWARE\tCONFIG\tBOOTS\tLAST SEEN\tLABELS")
	for _, d := range ds {
		seen := "never"
		if d.LastSeen != nil && !d.LastSeen.IsZero() {
			seen = time.Since(*d.LastSeen).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%v\t%s\tv%d\t%d\t%s\t%s\n", d.ID, d.State, d.Online, d.FirmwareVersion, d.ConfigVersion, d.BootCount, seen, formatLabels(d.Labels))
	}
	return tw.Flush()
}

func deviceShow(ctx context.Context, e env, args []string) error {
	k := newCall(e, "device show", "device show ID [-o table|json]", true)
	pos, err := k.parse(args, 1, 1)
	if err != nil {
		return err
	}
	return show(ctx, k, "GET", apiPath("devices", pos[0]), nil, func(w io.Writer, d backend.Device) error {
		return printDevices(w, d)
	})
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"text/tabwriter"
	"time"
)

func runDevice(ctx context.Context, e env, args []string) error {
	if len(args) == 0 {
		return usageError{"usage: ecowatt device add|list|show|events ..."}
	}
	switch args[0] {
	case "add":
		return deviceAdd(ctx, e, args[1:])
	case "list":
		return deviceList(ctx, e, args[1:])
	case "show":
		return deviceShow(ctx, e, args[1:])
	case "events":
		return deviceEvents(ctx, e, args[1:])
	}
	return usageError{fmt.Sprintf("unknown device subcommand %q (want add, list, show or events)", args[0])}
}

type provisioned struct {
	ID  string `json:"id"`
	Key string `json:"key"`
}

func deviceAdd(ctx context.Context, e env, args []string) error {
	fs := newFlags(e, "device add", "device add [ID | --count N --prefix P] [--keys-out FILE]")
	server, token := clientFlags(fs)
	count := fs.Int("count", 0, "provision this many devices named PREFIX-0001...")
	prefix := fs.String("prefix", "dev", "ID prefix with --count")
	keysOut := fs.String("keys-out", "", "merge the new keys into this JSON file {\"ID\":\"hexkey\"} (for devicesim)")
	pos, err := parseFlags(fs, e, args)
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
		return usageError{"device add: give one ID, or --count N (with --prefix)"}
	}
	c := newClient(*server, *token)
	keys := map[string]string{}
	if *keysOut != "" {
		if err := readKeys(*keysOut, keys); err != nil {
			return err
		}
	}
	start := time.Now()
	for i, id := range ids {
		var p provisioned
		if err := c.do(ctx, "POST", "/api/v1/devices", map[string]string{"id": id}, &p); err != nil {
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

// deviceView is the subset of the API's device document the table shows;
// -o json prints the document whole.
type deviceView struct {
	ID              string     `json:"id"`
	Online          bool       `json:"online"`
	LastSeen        *time.Time `json:"last_seen"`
	FirmwareVersion string     `json:"firmware_version"`
	ConfigVersion   int64      `json:"config_version"`
	BootCount       int64      `json:"boot_count"`
}

func outputFlag(fsSet interface {
	String(name, value, usage string) *string
}) *string {
	return fsSet.String("o", "table", "output format: table or json")
}

func deviceList(ctx context.Context, e env, args []string) error {
	fs := newFlags(e, "device list", "device list [-o table|json]")
	server, token := clientFlags(fs)
	out := outputFlag(fs)
	_, err := parseFlags(fs, e, args)
	if err != nil {
		return err
	}
	var raw json.RawMessage
	if err := newClient(*server, *token).do(ctx, "GET", "/api/v1/devices", nil, &raw); err != nil {
		return err
	}
	if *out == "json" {
		return printJSON(e.stdout, raw)
	}
	var list struct {
		Devices []deviceView `json:"devices"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		return fmt.Errorf("device list: decode: %w", err)
	}
	sort.Slice(list.Devices, func(i, j int) bool { return list.Devices[i].ID < list.Devices[j].ID })
	return printDevices(e.stdout, list.Devices)
}

func printDevices(w io.Writer, ds []deviceView) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tONLINE\tFIRMWARE\tCONFIG\tBOOTS\tLAST SEEN")
	for _, d := range ds {
		seen := "never"
		if d.LastSeen != nil && !d.LastSeen.IsZero() {
			seen = time.Since(*d.LastSeen).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%v\t%s\tv%d\t%d\t%s\n", d.ID, d.Online, d.FirmwareVersion, d.ConfigVersion, d.BootCount, seen)
	}
	return tw.Flush()
}

func deviceShow(ctx context.Context, e env, args []string) error {
	fs := newFlags(e, "device show", "device show ID [-o table|json]")
	server, token := clientFlags(fs)
	out := outputFlag(fs)
	pos, err := parseFlags(fs, e, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"device show: give one device ID"}
	}
	var raw json.RawMessage
	if err := newClient(*server, *token).do(ctx, "GET", "/api/v1/devices/"+pos[0], nil, &raw); err != nil {
		return err
	}
	if *out == "json" {
		return printJSON(e.stdout, raw)
	}
	var d deviceView
	if err := json.Unmarshal(raw, &d); err != nil {
		return fmt.Errorf("device show: decode: %w", err)
	}
	return printDevices(e.stdout, []deviceView{d})
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/ecowatt/ecowatt/backend"
)

// labelFlags is a repeatable --label KEY=VALUE. The key and value rules
// are the server's (backend/selector); the CLI only splits at the first
// "=" so that the server's message names a bad label.
type labelFlags struct {
	m   map[string]string
	bad error // the first malformed flag, reported as a usage error
}

func (l *labelFlags) String() string { return formatLabels(l.m) }

func (l *labelFlags) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want KEY=VALUE, got %q", s)
	}
	if l.m == nil {
		l.m = map[string]string{}
	}
	if old, dup := l.m[k]; dup && old != v {
		l.bad = fmt.Errorf("--label %s given twice with different values", k)
	}
	l.m[k] = v
	return nil
}

func (l *labelFlags) err() error { return l.bad }

// provisionBody is POST /api/v1/devices for id, with labels when any.
func provisionBody(id string, labels labelFlags) map[string]any {
	body := map[string]any{"id": id}
	if len(labels.m) > 0 {
		body["labels"] = labels.m
	}
	return body
}

// formatLabels is k=v,k=v in key order ("-" when none).
func formatLabels(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	parts := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ",")
}

// parseLabelPatch reads `site=galle model-`: KEY=VALUE sets, KEY- deletes
// (a key never ends in "-"), as a JSON merge patch.
func parseLabelPatch(args []string) (map[string]*string, error) {
	patch := make(map[string]*string, len(args))
	for _, a := range args {
		var key string
		var val *string
		if k, v, ok := strings.Cut(a, "="); ok {
			key, val = k, &v
		} else if k, ok := strings.CutSuffix(a, "-"); ok {
			key = k
		}
		if key == "" {
			return nil, fmt.Errorf("%q: want KEY=VALUE to set a label or KEY- to delete it", a)
		}
		if _, dup := patch[key]; dup {
			return nil, fmt.Errorf("label %s given twice", key)
		}
		patch[key] = val
	}
	return patch, nil
}

func deviceLabel(ctx context.Context, e env, args []string) error {
	k := newCall(e, "device label", "device label ID KEY=VALUE|KEY- ... [-o table|json]", true)
	pos, err := k.parse(args, 2, -1)
	if err != nil {
		return err
	}
	patch, err := parseLabelPatch(pos[1:])
	if err != nil {
		return k.usage(err.Error())
	}
	return show(ctx, k, "PATCH", apiPath("devices", pos[0], "labels"), patch, func(w io.Writer, c backend.LabelChange) error {
		state := "unchanged"
		if c.Changed {
			state = "changed"
		}
		_, err := fmt.Fprintf(w, "%s %s: %s\n", c.ID, state, formatLabels(c.Labels))
		return err
	})
}

// devicePageDoc is one page of GET /api/v1/devices?selector=...
type devicePageDoc struct {
	Devices []backend.Device `json:"devices"`
	Total   int              `json:"total"`
	Next    string           `json:"next_cursor,omitempty"`
}

// maxListPages bounds how many pages `device list` follows (a million
// devices at the default page size), so a cursor loop cannot run forever.
const maxListPages = 10_000

func deviceList(ctx context.Context, e env, args []string) error {
	k := newCall(e, "device list", "device list [--selector S] [--sort id|last_seen|firmware] [--limit N] [--page [--cursor C]] [-o table|json]", true)
	sel := k.fs.String("selector", "", "only devices matching this selector, e.g. 'site=colombo,online=true' (docs/OPERATIONS.md)")
	sortBy := k.fs.String("sort", "", "order: id (default), last_seen or firmware")
	limit := k.fs.Int("limit", 0, fmt.Sprintf("devices per request, 1-%d (default %d)", backend.MaxPageLimit, backend.DefaultPageLimit))
	onePage := k.fs.Bool("page", false, "print one page and the cursor of the next, instead of following every cursor")
	cursor := k.fs.String("cursor", "", "with --page: the page to print (the next_cursor of the page before)")
	if _, err := k.parse(args, 0, 0); err != nil {
		return err
	}
	if *cursor != "" && !*onePage {
		return k.usage("--cursor needs --page")
	}
	q := url.Values{}
	q.Set("selector", *sel)
	if *sortBy != "" {
		q.Set("sort", *sortBy)
	}
	if *limit != 0 {
		q.Set("limit", strconv.Itoa(*limit))
	}
	page := func(c string) (json.RawMessage, devicePageDoc, error) {
		if c != "" {
			q.Set("cursor", c)
		}
		raw, err := k.send(ctx, "GET", withQuery(apiPath("devices"), q), nil)
		if err != nil {
			return nil, devicePageDoc{}, err
		}
		d, err := decode[devicePageDoc](k, raw)
		return raw, d, err
	}
	if *onePage {
		raw, d, err := page(*cursor)
		if err != nil {
			return err
		}
		if k.out == outputJSON {
			return printJSON(e.stdout, raw)
		}
		if err := printDevices(e.stdout, d.Devices...); err != nil {
			return err
		}
		fmt.Fprintf(e.stderr, "%d of %d device(s) matching", len(d.Devices), d.Total)
		if d.Next != "" {
			fmt.Fprintf(e.stderr, "; next page: --page --cursor %s", d.Next)
		}
		fmt.Fprintln(e.stderr)
		return nil
	}
	all := devicePageDoc{Devices: []backend.Device{}}
	next := ""
	for i := 0; ; i++ {
		if i == maxListPages {
			return fmt.Errorf("device list: stopped after %d pages; narrow the selector or use --page", i)
		}
		_, d, err := page(next)
		if err != nil {
			return err
		}
		all.Devices = append(all.Devices, d.Devices...)
		all.Total = d.Total
		if d.Next == "" {
			break
		}
		if d.Next == next {
			return errors.New("device list: the server sent the same cursor twice")
		}
		next = d.Next
	}
	if k.out == outputJSON {
		return printJSON(e.stdout, all)
	}
	if err := printDevices(e.stdout, all.Devices...); err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "%d device(s)\n", len(all.Devices))
	return nil
}

func fleetSummary(ctx context.Context, e env, args []string) error {
	k := newCall(e, "fleet summary", "fleet summary [--selector S] [-o table|json]", true)
	sel := k.fs.String("selector", "", "count only devices matching this selector (docs/OPERATIONS.md)")
	if _, err := k.parse(args, 0, 0); err != nil {
		return err
	}
	q := url.Values{}
	if *sel != "" {
		q.Set("selector", *sel)
	}
	return show(ctx, k, "GET", withQuery(apiPath("fleet", "summary"), q), nil, printSummary)
}

// printSummary draws the counts as GROUP VALUE COUNT rows, each group's
// values in order of the count, largest first.
func printSummary(w io.Writer, s backend.FleetSummary) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	sel := s.Selector
	if sel == "" {
		sel = "(every device)"
	}
	fmt.Fprintf(tw, "SELECTOR\t%s\t\nTOTAL\t\t%d\n", sel, s.Total)
	for _, g := range []struct {
		name string
		m    map[string]int
	}{{"ONLINE", s.Online}, {"FIRMWARE", s.Firmware}, {"CONFIG", s.Config}, {"FOTA", s.FOTA}} {
		keys := slices.Sorted(maps.Keys(g.m))
		slices.SortStableFunc(keys, func(a, b string) int { return g.m[b] - g.m[a] })
		for _, key := range keys {
			fmt.Fprintf(tw, "%s\t%s\t%d\n", g.name, key, g.m[key])
		}
	}
	return tw.Flush()
}

package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"
)

func runConfig(ctx context.Context, e env, args []string) error {
	if len(args) == 0 {
		return usageError{"usage: ecowatt config set|show ..."}
	}
	switch args[0] {
	case "set":
		return configSet(ctx, e, args[1:])
	case "show":
		return configShow(ctx, e, args[1:])
	}
	return usageError{fmt.Sprintf("unknown config subcommand %q (want set or show)", args[0])}
}

// configDoc is the API's config document, as the CLI shows it.
type configDoc struct {
	Device  string `json:"device"`
	Desired struct {
		configValues
		Version   int64      `json:"version"`
		UpdatedAt *time.Time `json:"updated_at"`
		UpdatedBy string     `json:"updated_by"`
		Via       string     `json:"via"`
	} `json:"desired"`
	Reported *struct {
		configValues
		Version int64      `json:"version"`
		At      *time.Time `json:"at"`
	} `json:"reported"`
	Pending  bool     `json:"pending"`
	LastAck  *ackDoc  `json:"last_ack"`
	Drift    []string `json:"drift"`
	Delivery *struct {
		Version  int64      `json:"version"`
		SentAt   *time.Time `json:"sent_at"`
		Attempts int64      `json:"attempts"`
	} `json:"delivery"`
	// Set only.
	Changed *bool         `json:"changed"`
	Changes []fieldChange `json:"changes"`
}

type configValues struct {
	SamplingInterval int      `json:"sampling_interval"`
	UploadInterval   int      `json:"upload_interval"`
	Registers        []string `json:"registers"`
}

type fieldChange struct {
	Parameter string `json:"parameter"`
	Old       any    `json:"old"`
	New       any    `json:"new"`
}

type ackDoc struct {
	Version  int64         `json:"version"`
	Accepted []fieldChange `json:"accepted"`
	Rejected []struct {
		Parameter string `json:"parameter"`
		Reason    string `json:"reason"`
	} `json:"rejected"`
	Unchanged []string   `json:"unchanged"`
	At        *time.Time `json:"at"`
}

type historyDoc struct {
	History []struct {
		Type    string        `json:"type"`
		Version int64         `json:"version"`
		At      time.Time     `json:"at"`
		By      string        `json:"by"`
		Via     string        `json:"via"`
		Changes []fieldChange `json:"changes"`
		Ack     *ackDoc       `json:"ack"`
		Result  string        `json:"result"`
	} `json:"history"`
}

func configSet(ctx context.Context, e env, args []string) error {
	fs := newFlags(e, "config set", "config set ID [--sampling-interval S] [--upload-interval S] [--registers a,b,...] [--as NAME] [-o table|json]")
	server, token := clientFlags(fs)
	out := outputFlag(fs)
	sampling := fs.Int("sampling-interval", 0, "seconds between samples (1-300)")
	upload := fs.Int("upload-interval", 0, "seconds between uploads (a multiple of the sampling interval, at most 3600)")
	registers := fs.String("registers", "", "comma-separated register names, e.g. voltage,current")
	as := fs.String("as", "", "operator name recorded in the history (default $USER)")
	pos, err := parseFlags(fs, e, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"config set: give one device ID"}
	}
	// Only the flags given on the command line are part of the change
	// (ECOWATT_* variables never change a device's config).
	patch := map[string]any{}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "sampling-interval":
			patch["sampling_interval"] = *sampling
		case "upload-interval":
			patch["upload_interval"] = *upload
		case "registers":
			regs := []string{}
			for _, r := range strings.Split(*registers, ",") {
				if r = strings.TrimSpace(r); r != "" {
					regs = append(regs, r)
				}
			}
			patch["registers"] = regs
		}
	})
	if len(patch) == 0 {
		return usageError{"config set: give at least one of --sampling-interval, --upload-interval, --registers"}
	}
	c := newClient(*server, *token)
	who := *as
	if who == "" {
		who = e.getenv("USER")
	}
	if who != "" {
		c.header = http.Header{"X-Ecowatt-Operator": {who}}
	}
	var raw json.RawMessage
	if err := c.do(ctx, "PUT", "/api/v1/devices/"+url.PathEscape(pos[0])+"/config", patch, &raw); err != nil {
		return fmt.Errorf("config set %s: %w", pos[0], err)
	}
	if *out == "json" {
		return printJSON(e.stdout, raw)
	}
	var d configDoc
	if err := json.Unmarshal(raw, &d); err != nil {
		return fmt.Errorf("config set: decode: %w", err)
	}
	if d.Changed != nil && !*d.Changed {
		fmt.Fprintf(e.stdout, "%s: desired config already v%d with these values; nothing changed\n", pos[0], d.Desired.Version)
	} else {
		fmt.Fprintf(e.stdout, "%s: desired config is now v%d: %s\n", pos[0], d.Desired.Version, changesText(d.Changes))
	}
	return printConfig(e.stdout, d)
}

func configShow(ctx context.Context, e env, args []string) error {
	fs := newFlags(e, "config show", "config show ID [--history N] [-o table|json]")
	server, token := clientFlags(fs)
	out := outputFlag(fs)
	limit := fs.Int("history", 20, "history entries to show (0: none)")
	pos, err := parseFlags(fs, e, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"config show: give one device ID"}
	}
	c := newClient(*server, *token)
	base := "/api/v1/devices/" + url.PathEscape(pos[0]) + "/config"
	var raw, hraw json.RawMessage
	if err := c.do(ctx, "GET", base, nil, &raw); err != nil {
		return fmt.Errorf("config show %s: %w", pos[0], err)
	}
	if *limit > 0 {
		if err := c.do(ctx, "GET", fmt.Sprintf("%s/history?limit=%d", base, *limit), nil, &hraw); err != nil {
			return fmt.Errorf("config show %s: history: %w", pos[0], err)
		}
	}
	if *out == "json" {
		doc := map[string]json.RawMessage{"config": raw}
		if hraw != nil {
			var h struct {
				History json.RawMessage `json:"history"`
			}
			if err := json.Unmarshal(hraw, &h); err != nil {
				return fmt.Errorf("config show: decode history: %w", err)
			}
			doc["history"] = h.History
		}
		return printJSON(e.stdout, doc)
	}
	var d configDoc
	if err := json.Unmarshal(raw, &d); err != nil {
		return fmt.Errorf("config show: decode: %w", err)
	}
	if err := printConfig(e.stdout, d); err != nil {
		return err
	}
	if hraw == nil {
		return nil
	}
	var h historyDoc
	if err := json.Unmarshal(hraw, &h); err != nil {
		return fmt.Errorf("config show: decode history: %w", err)
	}
	fmt.Fprintln(e.stdout, "\nHistory (newest first):")
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WHEN\tEVENT\tVERSION\tWHO\tWHAT")
	for _, en := range h.History {
		who, what := "device", ""
		switch en.Type {
		case "desired":
			who = en.By
			if en.Via != "" {
				who += " (" + en.Via + ")"
			}
			what = changesText(en.Changes)
		case "ack":
			what = en.Result
			if en.Ack != nil {
				what += ": " + ackText(*en.Ack)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\tv%d\t%s\t%s\n", en.At.Local().Format(time.DateTime), en.Type, en.Version, who, what)
	}
	return tw.Flush()
}

// printConfig prints desired and reported side by side, then the state of
// delivery and the last ack.
func printConfig(w io.Writer, d configDoc) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\tVERSION\tSAMPLING\tUPLOAD\tREGISTERS\tSINCE")
	since := timeText(d.Desired.UpdatedAt)
	if d.Desired.UpdatedBy != "" {
		since += " by " + d.Desired.UpdatedBy
		if d.Desired.Via != "" {
			since += " (" + d.Desired.Via + ")"
		}
	}
	if d.Desired.Version == 0 {
		since = "factory default"
	}
	fmt.Fprintf(tw, "desired\tv%d\t%ds\t%ds\t%s\t%s\n", d.Desired.Version, d.Desired.SamplingInterval,
		d.Desired.UploadInterval, strings.Join(d.Desired.Registers, ","), since)
	if r := d.Reported; r != nil {
		fmt.Fprintf(tw, "reported\tv%d\t%ds\t%ds\t%s\t%s\n", r.Version, r.SamplingInterval, r.UploadInterval,
			strings.Join(r.Registers, ","), timeText(r.At))
	} else {
		fmt.Fprintln(tw, "reported\t-\t-\t-\t-\tnot reported yet")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	pending := "no"
	if d.Pending {
		pending = "yes (waiting for the device to acknowledge v" + fmt.Sprint(d.Desired.Version) + ")"
	}
	fmt.Fprintf(w, "pending:  %s\n", pending)
	if len(d.Drift) > 0 {
		fmt.Fprintf(w, "drift:    %s differ between desired and reported\n", strings.Join(d.Drift, ", "))
	}
	if dl := d.Delivery; dl != nil {
		fmt.Fprintf(w, "sent:     v%d %s, %d attempt(s)\n", dl.Version, timeText(dl.SentAt), dl.Attempts)
	}
	if a := d.LastAck; a != nil {
		fmt.Fprintf(w, "last ack: v%d %s: %s\n", a.Version, timeText(a.At), ackText(*a))
	} else {
		fmt.Fprintln(w, "last ack: none")
	}
	return nil
}

func changesText(cs []fieldChange) string {
	if len(cs) == 0 {
		return "no change"
	}
	parts := make([]string, len(cs))
	for i, c := range cs {
		parts[i] = fmt.Sprintf("%s %s -> %s", c.Parameter, valueText(c.Old), valueText(c.New))
	}
	return strings.Join(parts, ", ")
}

func ackText(a ackDoc) string {
	var parts []string
	if len(a.Accepted) > 0 {
		parts = append(parts, "accepted "+changesText(a.Accepted))
	}
	for _, r := range a.Rejected {
		parts = append(parts, fmt.Sprintf("rejected %s (%s)", r.Parameter, r.Reason))
	}
	if len(a.Unchanged) > 0 {
		parts = append(parts, "unchanged "+strings.Join(a.Unchanged, ","))
	}
	return strings.Join(parts, "; ")
}

func valueText(v any) string {
	switch x := v.(type) {
	case float64:
		return fmt.Sprintf("%gs", x)
	case []any:
		s := make([]string, len(x))
		for i, e := range x {
			s[i] = fmt.Sprint(e)
		}
		return "[" + strings.Join(s, ",") + "]"
	}
	return fmt.Sprint(v)
}

func timeText(t *time.Time) string {
	if t == nil || t.IsZero() {
		return ""
	}
	return t.Local().Format(time.DateTime)
}

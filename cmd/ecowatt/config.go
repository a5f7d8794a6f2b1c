package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ecowatt/ecowatt/backend/config"
	"github.com/ecowatt/ecowatt/backend/httpapi"
	"github.com/ecowatt/ecowatt/topics"
)

func configSet(ctx context.Context, e env, args []string) error {
	k := newCall(e, "config set", "config set ID [--sampling-interval S] [--upload-interval S] [--registers a,b,...] [--as NAME] [-o table|json]", true)
	fs := k.fs
	sampling := fs.Int("sampling-interval", 0, "seconds between samples (1-300)")
	upload := fs.Int("upload-interval", 0, "seconds between uploads (a multiple of the sampling interval, at most 3600)")
	registers := fs.String("registers", "", "comma-separated register names, e.g. voltage,current")
	as := fs.String("as", "", "operator name recorded in the history (default $USER)")
	pos, err := k.parse(args, 1, 1)
	if err != nil {
		return err
	}
	// Only the flags given on the command line are part of the change.
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
		return k.usage("give at least one of --sampling-interval, --upload-interval, --registers")
	}
	who := *as
	if who == "" {
		who = e.getenv("USER")
	}
	if who != "" {
		k.c.header = http.Header{httpapi.OperatorHeader: {who}}
	}
	return show(ctx, k, "PUT", apiPath("devices", pos[0], "config"), patch, func(w io.Writer, d config.Result) error {
		if !d.Changed {
			fmt.Fprintf(w, "%s: desired config already v%d with these values; nothing changed\n", pos[0], d.Desired.Version)
		} else {
			fmt.Fprintf(w, "%s: desired config is now v%d: %s\n", pos[0], d.Desired.Version, changesText(d.Changes))
		}
		return printConfig(w, d.State)
	})
}

func configShow(ctx context.Context, e env, args []string) error {
	k := newCall(e, "config show", "config show ID [--history N] [-o table|json]", true)
	limit := k.fs.Int("history", 20, "history entries to show (0: none)")
	pos, err := k.parse(args, 1, 1)
	if err != nil {
		return err
	}
	base := apiPath("devices", pos[0], "config")
	raw, err := k.send(ctx, "GET", base, nil)
	if err != nil {
		return err
	}
	doc := struct {
		Config  json.RawMessage `json:"config"`
		History json.RawMessage `json:"history,omitempty"`
	}{Config: raw}
	if *limit > 0 {
		hraw, err := k.send(ctx, "GET", withQuery(base+"/history", url.Values{"limit": {strconv.Itoa(*limit)}}), nil)
		if err != nil {
			return err
		}
		h, err := decode[struct {
			History json.RawMessage `json:"history"`
		}](k, hraw)
		if err != nil {
			return err
		}
		doc.History = h.History
	}
	if k.out == outputJSON {
		return printJSON(e.stdout, doc)
	}
	return render(k, raw, func(w io.Writer, d config.State) error {
		if err := printConfig(w, d); err != nil || doc.History == nil {
			return err
		}
		h, err := decode[[]config.Entry](k, doc.History)
		if err != nil {
			return err
		}
		return printHistory(w, h)
	})
}

func printHistory(w io.Writer, h []config.Entry) error {
	fmt.Fprintln(w, "\nHistory (newest first):")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WHEN\tEVENT\tVERSION\tWHO\tWHAT")
	for _, en := range h {
		who, what := "device", ""
		switch en.Type {
		case config.EntryDesired:
			who = en.By
			if en.Via != "" {
				who += " (" + en.Via + ")"
			}
			what = changesText(en.Changes)
		case config.EntryAck:
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
func printConfig(w io.Writer, d config.State) error {
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
		fmt.Fprintf(w, "last ack: v%d %s: %s\n", a.Version, timeText(a.At), ackText(a.ConfigAck))
	} else {
		fmt.Fprintln(w, "last ack: none")
	}
	return nil
}

func changesText(cs []topics.FieldChange) string {
	if len(cs) == 0 {
		return "no change"
	}
	parts := make([]string, len(cs))
	for i, c := range cs {
		parts[i] = fmt.Sprintf("%s %s -> %s", c.Parameter, valueText(c.Old), valueText(c.New))
	}
	return strings.Join(parts, ", ")
}

func ackText(a topics.ConfigAck) string {
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

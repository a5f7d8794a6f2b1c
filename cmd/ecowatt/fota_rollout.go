package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// rolloutView is the API's rollout document.
type rolloutView struct {
	ID                string         `json:"id"`
	Version           string         `json:"version"`
	State             string         `json:"state"`
	Reason            string         `json:"reason"`
	Canary            int            `json:"canary"`
	BatchSize         int            `json:"batch_size"`
	MaxFailurePercent float64        `json:"max_failure_percent"`
	Total             int            `json:"total"`
	BatchCount        int            `json:"batch_count"`
	CurrentBatch      int            `json:"current_batch"`
	CreatedAt         time.Time      `json:"created_at"`
	Counts            map[string]int `json:"counts"`
	FailurePercent    float64        `json:"failure_percent"`
	DeviceStates      map[string]int `json:"device_states"`
	Batches           []struct {
		Index  int            `json:"index"`
		Canary bool           `json:"canary"`
		Size   int            `json:"size"`
		State  string         `json:"state"`
		Counts map[string]int `json:"counts"`
	} `json:"batches"`
	Devices []struct {
		ID       string  `json:"id"`
		Batch    int     `json:"batch"`
		State    string  `json:"state"`
		Reason   string  `json:"reason"`
		FOTA     string  `json:"fota_state"`
		Received int     `json:"chunk_received"`
		Total    int     `json:"total_chunks"`
		Percent  float64 `json:"percent"`
	} `json:"devices"`
}

func (r rolloutView) final() bool { return r.State == "completed" || r.State == "aborted" }

// done counts devices that are finished in the rollout.
func done(c map[string]int) int {
	return c["succeeded"] + c["failed"] + c["skipped"] + c["cancelled"]
}

func pct(n, total int) float64 {
	if total == 0 {
		return 0
	}
	return 100 * float64(n) / float64(total)
}

func fotaRollout(ctx context.Context, e env, args []string) error {
	const synopsis = "fota rollout --version V --devices a,b|--all [--canary 2] [--batch-size 50] [--max-failure-percent 10] [--wait]"
	fs := newFlags(e, "fota rollout", synopsis)
	server, token := clientFlags(fs)
	out := outputFlag(fs)
	version := fs.String("version", "", "firmware version to roll out")
	devices := fs.String("devices", "", "comma-separated device IDs")
	all := fs.Bool("all", false, "every registered device")
	canary := fs.Int("canary", 1, "devices in the canary batch (0: none)")
	batch := fs.Int("batch-size", 50, "devices per batch after the canary")
	maxFail := fs.Float64("max-failure-percent", 10, "abort when more than this percentage of the started devices failed")
	wait := fs.Bool("wait", false, "show progress until the rollout completes or aborts; fail unless it completed without failures")
	timeout := fs.Duration("timeout", 30*time.Minute, "how long --wait waits")
	pos, err := parseFlags(fs, e, args)
	if err != nil {
		return err
	}
	if *version == "" || len(pos) != 0 || (*devices == "") == !*all {
		return usageError{"usage: ecowatt " + synopsis + " (give exactly one of --devices and --all)"}
	}
	spec := map[string]any{"version": *version, "canary": *canary, "batch_size": *batch, "max_failure_percent": *maxFail}
	if *all {
		spec["devices"] = "all"
	} else {
		spec["devices"] = strings.Split(*devices, ",")
	}
	c := newClient(*server, *token)
	var raw json.RawMessage
	if err := c.do(ctx, "POST", "/api/v1/rollouts", spec, &raw); err != nil {
		return fmt.Errorf("fota rollout: %w", err)
	}
	var r rolloutView
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("fota rollout: decode: %w", err)
	}
	if *wait {
		return watchRollout(ctx, e, c, r.ID, *timeout, true)
	}
	if *out == "json" {
		return printJSON(e.stdout, raw)
	}
	fmt.Fprintf(e.stdout, "rollout %s of %s to %d devices created (%d batches); follow it with: ecowatt fota status %s --watch\n",
		r.ID, r.Version, r.Total, r.BatchCount, r.ID)
	return nil
}

func fotaStatus(ctx context.Context, e env, args []string) error {
	const synopsis = "fota status [RID] [--watch] [-o table|json]"
	fs := newFlags(e, "fota status", synopsis)
	server, token := clientFlags(fs)
	out := outputFlag(fs)
	watch := fs.Bool("watch", false, "redraw every second until the rollout ends")
	timeout := fs.Duration("timeout", 30*time.Minute, "how long --watch watches")
	pos, err := parseFlags(fs, e, args)
	if err != nil {
		return err
	}
	c := newClient(*server, *token)
	if len(pos) == 0 {
		return listRollouts(ctx, e, c, *out)
	}
	if len(pos) != 1 {
		return usageError{"usage: ecowatt " + synopsis}
	}
	if *watch {
		return watchRollout(ctx, e, c, pos[0], *timeout, false)
	}
	var raw json.RawMessage
	if err := c.do(ctx, "GET", "/api/v1/rollouts/"+url.PathEscape(pos[0]), nil, &raw); err != nil {
		return fmt.Errorf("fota status: %w", err)
	}
	if *out == "json" {
		return printJSON(e.stdout, raw)
	}
	var r rolloutView
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("fota status: decode: %w", err)
	}
	printRollout(e.stdout, r)
	return nil
}

func listRollouts(ctx context.Context, e env, c *client, out string) error {
	var raw json.RawMessage
	if err := c.do(ctx, "GET", "/api/v1/rollouts", nil, &raw); err != nil {
		return fmt.Errorf("fota status: %w", err)
	}
	if out == "json" {
		return printJSON(e.stdout, raw)
	}
	var l struct {
		Rollouts []rolloutView `json:"rollouts"`
	}
	if err := json.Unmarshal(raw, &l); err != nil {
		return fmt.Errorf("fota status: decode: %w", err)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ROLLOUT\tVERSION\tSTATE\tPROGRESS\tSUCCEEDED\tFAILED\tDEVICES\tCREATED")
	for _, r := range l.Rollouts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n", r.ID, r.Version, r.State, bar(pct(done(r.Counts), r.Total), 20),
			r.Counts["succeeded"], r.Counts["failed"], r.Total, r.CreatedAt.Local().Format(time.DateTime))
	}
	return tw.Flush()
}

// watchRollout prints the rollout every second until it ends. With strict
// it fails unless the rollout completed without a failed device.
func watchRollout(ctx context.Context, e env, c *client, rid string, timeout time.Duration, strict bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		var r rolloutView
		err := c.do(ctx, "GET", "/api/v1/rollouts/"+url.PathEscape(rid), nil, &r)
		if err == nil {
			printRollout(e.stdout, r)
			if r.final() {
				if strict && (r.State != "completed" || r.Counts["failed"] > 0) {
					return fmt.Errorf("rollout %s %s: %d failed %s", rid, r.State, r.Counts["failed"], r.Reason)
				}
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("rollout %s: still running after %v (it carries on; ecowatt fota status %s)", rid, timeout, rid)
		case <-t.C:
		}
	}
}

// printRollout shows a rollout with progress bars: overall, per batch and
// per device being updated.
func printRollout(w io.Writer, r rolloutView) {
	fmt.Fprintf(w, "rollout %s  firmware %s  %s", r.ID, r.Version, strings.ToUpper(r.State))
	if r.Reason != "" {
		fmt.Fprintf(w, " (%s)", r.Reason)
	}
	fmt.Fprintf(w, "\n  canary %d, batches of %d, abort above %.4g%% failed; failed so far %.1f%%\n",
		r.Canary, r.BatchSize, r.MaxFailurePercent, r.FailurePercent)
	fmt.Fprintf(w, "  overall   %s %d/%d done\n", bar(pct(done(r.Counts), r.Total), 30), done(r.Counts), r.Total)
	var parts []string
	for _, k := range []string{"pending", "updating", "succeeded", "failed", "skipped", "cancelled"} {
		if n := r.Counts[k]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, n))
		}
	}
	fmt.Fprintf(w, "  devices   %s\n", strings.Join(parts, ", "))
	if len(r.DeviceStates) > 0 {
		keys := make([]string, 0, len(r.DeviceStates))
		for k := range r.DeviceStates {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts = parts[:0]
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s %d", k, r.DeviceStates[k]))
		}
		fmt.Fprintf(w, "  updating  %s\n", strings.Join(parts, ", "))
	}
	for _, b := range r.Batches {
		name := fmt.Sprintf("batch %d", b.Index)
		if b.Canary {
			name = "canary"
		}
		fmt.Fprintf(w, "  %-9s %s %d/%d  %s", name, bar(pct(done(b.Counts), b.Size), 30), done(b.Counts), b.Size, b.State)
		if n := b.Counts["failed"]; n > 0 {
			fmt.Fprintf(w, ", %d failed", n)
		}
		fmt.Fprintln(w)
	}
	for _, d := range r.Devices {
		switch d.State {
		case "updating":
			fmt.Fprintf(w, "    %-20s %s %d/%d %s\n", d.ID, bar(d.Percent, 20), d.Received, d.Total, d.FOTA)
		case "failed":
			fmt.Fprintf(w, "    %-20s failed: %s\n", d.ID, d.Reason)
		}
	}
}

func fotaAction(action string) func(context.Context, env, []string) error {
	return func(ctx context.Context, e env, args []string) error {
		fs := newFlags(e, "fota "+action, "fota "+action+" RID")
		server, token := clientFlags(fs)
		pos, err := parseFlags(fs, e, args)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return usageError{"usage: ecowatt fota " + action + " RID"}
		}
		var r rolloutView
		if err := newClient(*server, *token).do(ctx, "POST", "/api/v1/rollouts/"+url.PathEscape(pos[0])+"/"+action, nil, &r); err != nil {
			return fmt.Errorf("fota %s: %w", action, err)
		}
		printRollout(e.stdout, r)
		return nil
	}
}

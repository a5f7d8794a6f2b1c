package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ecowatt/ecowatt/backend/fota"
	"github.com/ecowatt/ecowatt/backend/jobs"
)

func final(r fota.Rollout) bool {
	return r.State == fota.RolloutCompleted || r.State == fota.RolloutAborted
}

// done counts devices that are finished in the rollout.
func done(c map[string]int) int {
	return c[fota.DevSucceeded] + c[fota.DevFailed] + c[fota.DevSkipped] + c[fota.DevCancelled]
}

func pct(n, total int) float64 {
	if total == 0 {
		return 0
	}
	return 100 * float64(n) / float64(total)
}

func fotaRollout(ctx context.Context, e env, args []string) error {
	const synopsis = "fota rollout --version V --devices a,b|--all [--canary 1] [--batch-size 50] [--max-failure-percent 10] [--wait] [-o table|json]"
	k := newCall(e, "fota rollout", synopsis, true)
	fs := k.fs
	version := fs.String("version", "", "firmware version to roll out")
	devices := fs.String("devices", "", "comma-separated device IDs")
	all := fs.Bool("all", false, "every registered device")
	canary := fs.Int("canary", fota.DefaultCanary, "devices in the canary batch (0: none)")
	batch := fs.Int("batch-size", fota.DefaultBatchSize, "devices per batch after the canary")
	maxFail := fs.Float64("max-failure-percent", fota.DefaultMaxFailurePercent, "abort when more than this percentage of the started devices failed")
	wait := fs.Bool("wait", false, "show progress until the rollout completes or aborts; fail unless it completed without failures")
	timeout := fs.Duration("timeout", 30*time.Minute, "how long --wait waits")
	if _, err := k.parse(args, 0, 0); err != nil {
		return err
	}
	if *version == "" || (*devices == "") == !*all {
		return k.usage("give --version and exactly one of --devices and --all")
	}
	spec := fota.RolloutSpec{Version: *version, Devices: fota.Selector{All: *all}, Canary: canary, BatchSize: *batch, MaxFailurePercent: maxFail}
	if !*all {
		spec.Devices.IDs = strings.Split(*devices, ",")
	}
	raw, err := k.send(ctx, "POST", apiPath("rollouts"), spec)
	if err != nil {
		return err
	}
	r, err := decode[fota.Rollout](k, raw)
	if err != nil {
		return err
	}
	if *wait {
		return watchRollout(ctx, k, r.ID, *timeout, true)
	}
	return render(k, raw, func(w io.Writer, r fota.Rollout) error {
		job := "" // a rollout is a firmware job: name it for `ecowatt job`
		if jid, ok := strings.CutPrefix(r.ID, jobs.RolloutPrefix); ok {
			job = ", firmware job " + jid
		}
		_, err := fmt.Fprintf(w, "rollout %s of %s to %d devices created (%d batches%s); follow it with: ecowatt fota status %s --watch\n",
			r.ID, r.Version, r.Total, r.BatchCount, job, r.ID)
		return err
	})
}

func fotaStatus(ctx context.Context, e env, args []string) error {
	k := newCall(e, "fota status", "fota status [RID] [--watch] [-o table|json]", true)
	watch := k.fs.Bool("watch", false, "redraw every second until the rollout ends")
	timeout := k.fs.Duration("timeout", 30*time.Minute, "how long --watch watches")
	pos, err := k.parse(args, 0, 1)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return show(ctx, k, "GET", apiPath("rollouts"), nil, printRollouts)
	}
	if *watch {
		return watchRollout(ctx, k, pos[0], *timeout, false)
	}
	return show(ctx, k, "GET", apiPath("rollouts", pos[0]), nil, printRollout)
}

// printRollouts draws the list of rollouts, one a line.
func printRollouts(w io.Writer, l struct {
	Rollouts []fota.Rollout `json:"rollouts"`
}) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ROLLOUT\tVERSION\tSTATE\tPROGRESS\tSUCCEEDED\tFAILED\tDEVICES\tCREATED")
	for _, r := range l.Rollouts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n", r.ID, r.Version, r.State, bar(pct(done(r.Counts), r.Total), 20),
			r.Counts[fota.DevSucceeded], r.Counts[fota.DevFailed], r.Total, r.CreatedAt.Local().Format(time.DateTime))
	}
	return tw.Flush()
}

// watchRollout prints the rollout every second until it ends. With strict
// it fails unless the rollout completed without a failed device.
func watchRollout(ctx context.Context, k *call, rid string, timeout time.Duration, strict bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		var r fota.Rollout
		err := k.c.do(ctx, "GET", apiPath("rollouts", rid), nil, &r)
		if err == nil {
			if err := printRollout(k.e.stdout, r); err != nil {
				return err
			}
			if final(r) {
				if strict && (r.State != fota.RolloutCompleted || r.Counts[fota.DevFailed] > 0) {
					return fmt.Errorf("rollout %s %s: %d failed %s", rid, r.State, r.Counts[fota.DevFailed], r.Reason)
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
func printRollout(w io.Writer, r fota.Rollout) error {
	fmt.Fprintf(w, "rollout %s  firmware %s  %s", r.ID, r.Version, strings.ToUpper(r.State))
	if r.Reason != "" {
		fmt.Fprintf(w, " (%s)", r.Reason)
	}
	fmt.Fprintf(w, "\n  canary %d, batches of %d, abort above %.4g%% failed; failed so far %.1f%%\n",
		r.Canary, r.BatchSize, r.MaxFailurePercent, r.FailurePercent)
	fmt.Fprintf(w, "  overall   %s %d/%d done\n", bar(pct(done(r.Counts), r.Total), 30), done(r.Counts), r.Total)
	var parts []string
	for _, k := range fota.DevStates {
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
		if n := b.Counts[fota.DevFailed]; n > 0 {
			fmt.Fprintf(w, ", %d failed", n)
		}
		fmt.Fprintln(w)
	}
	for _, d := range r.Devices {
		switch d.State {
		case fota.DevUpdating:
			fmt.Fprintf(w, "    %-20s %s %d/%d %s\n", d.ID, bar(d.Percent, 20), d.Received, d.Total, d.FOTA)
		case fota.DevFailed:
			fmt.Fprintf(w, "    %-20s failed: %s\n", d.ID, d.Reason)
		}
	}
	return nil
}

// fotaAction is pause, resume or abort.
func fotaAction(action string) func(context.Context, env, []string) error {
	return func(ctx context.Context, e env, args []string) error {
		k := newCall(e, "fota "+action, "fota "+action+" RID [-o table|json]", true)
		pos, err := k.parse(args, 1, 1)
		if err != nil {
			return err
		}
		return show(ctx, k, "POST", apiPath("rollouts", pos[0], action), nil, printRollout)
	}
}

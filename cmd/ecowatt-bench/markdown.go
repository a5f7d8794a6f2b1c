package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// Generated sections of docs/BENCHMARKS.md sit between these markers;
// everything else in the file is written by hand and left alone.
const (
	markBegin = "<!-- generated:%s -->"
	markEnd   = "<!-- /generated:%s -->"
)

// markdownTargets is the table of targets.
func (r *report) markdownTargets() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Targets as of the run of %s (`%s`):\n\n", r.Date.Format("2006-01-02 15:04 MST"), r.Command)
	b.WriteString("| area | target | measured | ratio | status | command |\n|---|---|---|---|---|---|\n")
	for _, t := range r.Targets {
		cmd := t.Command
		if cmd != "—" {
			cmd = "`" + cmd + "`"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | **%s** | %s |\n", t.Area, t.Target, t.Measured, t.Ratio, t.Status, cmd)
	}
	return b.String()
}

// markdownLatest is the full result of the run.
func (r *report) markdownLatest() string {
	var b strings.Builder
	size := "quick"
	if r.Full {
		size = "full"
	}
	fmt.Fprintf(&b, "### Latest run: %s (%s)\n\n", r.Date.Format("2006-01-02 15:04 MST"), size)
	fmt.Fprintf(&b, "- Command: `%s`\n", r.Command)
	if r.Commit != "" {
		fmt.Fprintf(&b, "- Source: %s\n", r.Commit)
	}
	fmt.Fprintf(&b, "- Machine: %s\n", r.Machine)
	if len(r.Broker) > 0 {
		fmt.Fprintf(&b, "- Broker runs: %d per scenario per broker, interleaved; rates and latencies are the median run's, "+
			"the ratio is the median of the back-to-back pairs, loss is summed over all runs.\n", r.Repeat)
		b.WriteString("\n#### Broker: delivered msgs/s, ecowatt (device tokens + ACL) vs Mosquitto (password file + ACL file)\n\n")
		b.WriteString("Latency is publish to receipt in ms: p50 / p90 / p99 / max.\n\n")
		b.WriteString("| scenario | shape | ecowatt msg/s | loss | latency | mosquitto msg/s | loss | latency | ecowatt / mosquitto |\n")
		b.WriteString("|---|---|---:|---:|---|---:|---:|---|---:|\n")
		for _, row := range r.Broker {
			e, m := row.Stats[nameEcowatt], row.Stats[nameMosquitto]
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | **%.2f×** |\n",
				row.Scenario.Name, row.Scenario, thousands(e.RecvRate), loss(e), lat(e), thousands(m.RecvRate), loss(m), lat(m), row.Ratio)
		}
	}
	if r.Security != nil {
		b.WriteString("\n#### Security: envelope seal + open vs one bare HMAC-SHA256 of the same canonical bytes (256 B body)\n\n")
		b.WriteString("ns/op and allocs/op are medians over all rounds; the ratio is min / **median** / max of the per-round ratios. " +
			"The bare HMAC is hmac.New + Write + Sum; seal and open each MAC once, from the key's pads hashed at DeriveKeys " +
			"(two SHA-256 blocks fewer per MAC), so the floor is about 1.6×.\n\n")
		b.WriteString("| case | seal+open ns/op | allocs/op | bare HMAC ns/op | allocs/op | rounds | ratio | target |\n|---|---:|---:|---:|---:|---:|---:|---|\n")
		for _, c := range r.Security.Cases {
			t := securityTarget(c.Case)
			fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.0f | %.0f | %d | %.2f / **%.2f×** / %.2f | ≤ %.0f×: %s |\n", c.Case, c.SealOpenNs, c.SealOpenAllocs,
				c.BareHMACNs, c.BareHMACAllocs, c.Rounds, c.RatioMin, c.Ratio, c.RatioMax, t, metIf(c.Ratio <= t))
		}
	}
	b.WriteString(r.markdownServer())
	return b.String()
}

// historyRow is the one-line summary of a run kept in the history table.
func (r *report) historyRow() string {
	size := "quick"
	if r.Full {
		size = "full"
	}
	ratio, loss, seal := "—", "—", "—"
	for _, t := range r.Targets {
		switch {
		case strings.HasPrefix(t.Target, "embedded broker") && t.Status != statusNotMeasured:
			ratio = t.Ratio
		case strings.HasPrefix(t.Target, "no QoS 1") && t.Status != statusNotMeasured:
			loss = t.Measured
		}
	}
	if r.Security != nil && len(r.Security.Cases) > 0 {
		seal = fmt.Sprintf("%.2f×", r.Security.Cases[0].Ratio)
	}
	commit := r.Commit
	if commit == "" {
		commit = "—"
	}
	online, rss, p99, share := "—", "—", "—", "—"
	if f := r.Fleet; f != nil && f.Online > 0 {
		online = fmt.Sprintf("%s in %.1f", thousands(float64(f.Online)), f.OnlineSecs)
		rss = fmt.Sprintf("%.1f", f.RSSPerDeviceKiB)
	}
	if c := r.Commands; c != nil {
		for _, st := range c.Steps {
			if st.Rate == 500 {
				p99 = fmt.Sprintf("%.0f", st.P99Ms)
			}
		}
	}
	if f := r.FOTA; f != nil && f.RawMBps > 0 {
		share = fmt.Sprintf("%.1f%%", 100*f.Fraction)
	}
	return fmt.Sprintf("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |", r.Date.Format("2006-01-02 15:04"), commit, size, ratio, loss, seal,
		online, rss, p99, share)
}

const historyHeader = "| date (UTC) | source | size | ecowatt / mosquitto msgs/s | QoS 1 loss | seal+open / HMAC (plain) " +
	"| fleet online (s) | KiB/device | command p99 at 500/s (ms) | fota goodput / raw |\n" +
	"|---|---|---|---|---|---|---|---|---|---|\n"

// updateMarkdown rewrites the generated sections of path (targets, latest)
// and adds r to the history, newest first. Sections missing from the file
// are appended.
func updateMarkdown(path string, r *report) error {
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("update %s: %w", path, err)
	}
	doc := string(b)
	var rows []string
	if old, ok := section(doc, "history"); ok {
		for line := range strings.Lines(old) {
			if strings.HasPrefix(line, "| 2") { // a dated row
				rows = append(rows, strings.TrimRight(line, "\n"))
			}
		}
	}
	history := historyHeader + r.historyRow() + "\n"
	for _, row := range rows {
		history += row + "\n"
	}
	doc = setSection(doc, "targets", r.markdownTargets())
	doc = setSection(doc, "latest", r.markdownLatest())
	doc = setSection(doc, "history", history)
	if err := os.WriteFile(path+".tmp", []byte(doc), 0o644); err != nil {
		return fmt.Errorf("update %s: %w", path, err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return fmt.Errorf("update %s: %w", path, err)
	}
	return nil
}

// section returns the text between name's markers.
func section(doc, name string) (string, bool) {
	begin, end := fmt.Sprintf(markBegin, name), fmt.Sprintf(markEnd, name)
	i := strings.Index(doc, begin)
	j := strings.Index(doc, end)
	if i < 0 || j < i {
		return "", false
	}
	return doc[i+len(begin) : j], true
}

// setSection replaces the text between name's markers with text, or
// appends the markers and text.
func setSection(doc, name, text string) string {
	begin, end := fmt.Sprintf(markBegin, name), fmt.Sprintf(markEnd, name)
	block := begin + "\n" + text + end
	i := strings.Index(doc, begin)
	j := strings.Index(doc, end)
	if i < 0 || j < i {
		if doc != "" && !strings.HasSuffix(doc, "\n\n") {
			doc = strings.TrimRight(doc, "\n") + "\n\n"
		}
		return doc + block + "\n"
	}
	return doc[:i] + block + doc[j+len(end):]
}

func loss(s brokerStat) string {
	if s.Expected == 0 {
		return "—"
	}
	return fmt.Sprintf("%d (%.2f%%)", s.Lost, s.LossPct)
}

func lat(s brokerStat) string {
	l := s.Latency
	return fmt.Sprintf("%.1f / %.1f / %.1f / %.1f", l.P50, l.P90, l.P99, l.Max)
}

// thousands formats x rounded, with thin separators: 12,345.
func thousands(x float64) string {
	s := fmt.Sprintf("%.0f", x)
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 && s[i-1] != '-' {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}

// regressionBand is the change in a same-run ratio that compare reports as
// a regression; smaller moves are within this machine's noise.
const regressionBand = 0.20

// compareReports prints the change from old to cur: broker ratios and
// loss, security ratios. Ratios, not raw rates, decide regressions: each is
// measured against a reference in its own run.
func compareReports(w io.Writer, old, cur *report) (regressions int) {
	fmt.Fprintf(w, "Change since the run of %s (%s):\n", old.Date.Format("2006-01-02 15:04 MST"), old.Command)
	oldRows := map[string]brokerRow{}
	for _, b := range old.Broker {
		oldRows[b.Scenario.Name] = b
	}
	for _, b := range cur.Broker {
		o, ok := oldRows[b.Scenario.Name]
		if !ok {
			fmt.Fprintf(w, "  %-24s new scenario: ratio %.2f×\n", b.Scenario.Name, b.Ratio)
			continue
		}
		mark := ""
		if o.Ratio > 0 && b.Ratio < o.Ratio*(1-regressionBand) {
			mark = "  <- REGRESSION (ratio)"
			regressions++
		}
		oe, ce := o.Stats[nameEcowatt], b.Stats[nameEcowatt]
		if ce.LossPct > oe.LossPct {
			mark += "  <- REGRESSION (ecowatt loss)"
			regressions++
		}
		fmt.Fprintf(w, "  %-24s ecowatt %s -> %s msg/s (%s), loss %.2f%% -> %.2f%%, ratio %.2f× -> %.2f× (%s)%s\n",
			b.Scenario.Name, thousands(oe.RecvRate), thousands(ce.RecvRate), pct(oe.RecvRate, ce.RecvRate),
			oe.LossPct, ce.LossPct, o.Ratio, b.Ratio, pct(o.Ratio, b.Ratio), mark)
	}
	if old.Security != nil && cur.Security != nil {
		oldCases := map[string]securityCase{}
		for _, c := range old.Security.Cases {
			oldCases[c.Case] = c
		}
		for _, c := range cur.Security.Cases {
			o, ok := oldCases[c.Case]
			if !ok {
				continue
			}
			mark := ""
			if c.Ratio > o.Ratio*(1+regressionBand) {
				mark = "  <- REGRESSION"
				regressions++
			}
			fmt.Fprintf(w, "  security %-15s seal+open %.0f -> %.0f ns/op, ratio %.2f× -> %.2f× (%s)%s\n",
				c.Case, o.SealOpenNs, c.SealOpenNs, o.Ratio, c.Ratio, pct(o.Ratio, c.Ratio), mark)
		}
	}
	regressions += compareServer(w, old, cur)
	if regressions == 0 {
		fmt.Fprintf(w, "No regression beyond the ±%.0f%% noise band.\n", 100*regressionBand)
	} else {
		fmt.Fprintf(w, "%d regression(s) beyond the ±%.0f%% noise band.\n", regressions, 100*regressionBand)
	}
	return regressions
}

func pct(old, cur float64) string {
	if old == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%+.1f%%", 100*(cur-old)/old)
}

// runCompare is `ecowatt-bench compare OLD.json NEW.json`.
func runCompare(_ context.Context, e env, args []string) error {
	fl := newFlags(e, "compare", "compare [--fail] OLD.json NEW.json")
	fail := fl.Bool("fail", false, "exit 1 when a regression is found")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() != 2 {
		return usageError{"compare: want OLD.json NEW.json"}
	}
	old, err := readReport(fl.Arg(0))
	if err != nil {
		return err
	}
	cur, err := readReport(fl.Arg(1))
	if err != nil {
		return err
	}
	if n := compareReports(e.stdout, old, cur); n > 0 && *fail {
		return fmt.Errorf("compare: %d regression(s)", n)
	}
	return nil
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"text/tabwriter"
	"time"
)

func runCommand(ctx context.Context, e env, args []string) error {
	if len(args) == 0 {
		return usageError{"usage: ecowatt command send|list|show|cancel ..."}
	}
	switch args[0] {
	case "send":
		return commandSend(ctx, e, args[1:])
	case "list":
		return commandList(ctx, e, args[1:])
	case "show":
		return commandShow(ctx, e, args[1:])
	case "cancel":
		return commandCancel(ctx, e, args[1:])
	}
	return usageError{fmt.Sprintf("unknown command subcommand %q (want send, list, show or cancel)", args[0])}
}

// commandView is the API's command document, as the CLI shows it.
type commandView struct {
	ID             string     `json:"id"`
	Device         string     `json:"device"`
	Action         string     `json:"action"`
	TargetRegister string     `json:"target_register"`
	Value          *int       `json:"value"`
	RequestID      string     `json:"request_id"`
	State          string     `json:"state"`
	Attempts       int        `json:"attempts"`
	CreatedAt      time.Time  `json:"created_at"`
	SentAt         *time.Time `json:"sent_at"`
	DeliveredAt    *time.Time `json:"delivered_at"`
	FinishedAt     *time.Time `json:"finished_at"`
	Error          string     `json:"error"`
	Result         *struct {
		Status string `json:"status"`
		Value  *int   `json:"value"`
		Error  string `json:"error"`
	} `json:"result"`
}

func (c commandView) final() bool {
	switch c.State {
	case "succeeded", "failed", "expired", "timed_out", "cancelled":
		return true
	}
	return false
}

func commandSend(ctx context.Context, e env, args []string) error {
	const synopsis = "command send ID ACTION [REGISTER [VALUE]] [--ttl 10m] [--request-id R] [--wait] [-o table|json]"
	fs := newFlags(e, "command send", synopsis)
	server, token := clientFlags(fs)
	out := outputFlag(fs)
	ttl := fs.String("ttl", "", "time to live before delivery, e.g. 90s or 10m (server default 10m)")
	reqID := fs.String("request-id", "", "your own tag, echoed in the command's events; repeating it does not queue twice")
	wait := fs.Bool("wait", false, "wait for the command's final state; fail unless it succeeded")
	timeout := fs.Duration("timeout", 2*time.Minute, "how long --wait waits")
	pos, err := parseFlags(fs, e, args)
	if err != nil {
		return err
	}
	if len(pos) < 2 || len(pos) > 4 {
		return usageError{"usage: ecowatt " + synopsis}
	}
	doc := map[string]any{"action": pos[1]}
	if len(pos) >= 3 {
		doc["target_register"] = pos[2]
	}
	if len(pos) == 4 {
		v, err := strconv.Atoi(pos[3])
		if err != nil {
			return usageError{fmt.Sprintf("command send: VALUE %q is not an integer", pos[3])}
		}
		doc["value"] = v
	}
	if *ttl != "" {
		doc["ttl"] = *ttl
	}
	if *reqID != "" {
		doc["request_id"] = *reqID
	}
	c := newClient(*server, *token)
	var raw json.RawMessage
	if err := c.do(ctx, "POST", "/api/v1/devices/"+url.PathEscape(pos[0])+"/commands", doc, &raw); err != nil {
		return fmt.Errorf("command send: %w", err)
	}
	var cmd commandView
	if err := json.Unmarshal(raw, &cmd); err != nil {
		return fmt.Errorf("command send: decode: %w", err)
	}
	if *wait {
		raw, cmd, err = waitCommand(ctx, c, cmd.ID, *timeout)
		if err != nil {
			return err
		}
	}
	if *out == "json" {
		err = printJSON(e.stdout, raw)
	} else {
		err = printCommands(e.stdout, []commandView{cmd})
	}
	if err == nil && *wait && cmd.State != "succeeded" {
		err = fmt.Errorf("command %s %s: %s", cmd.ID, cmd.State, reason(cmd))
	}
	return err
}

// waitCommand polls a command until it is final or timeout passes.
func waitCommand(ctx context.Context, c *client, cid string, timeout time.Duration) (json.RawMessage, commandView, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		var raw json.RawMessage
		var cmd commandView
		err := c.do(ctx, "GET", "/api/v1/commands/"+url.PathEscape(cid), nil, &raw)
		if err == nil {
			err = json.Unmarshal(raw, &cmd)
		}
		if err == nil && cmd.final() {
			return raw, cmd, nil
		}
		select {
		case <-ctx.Done():
			return nil, cmd, fmt.Errorf("command %s still %s after %v (it stays queued; see ecowatt command show %s)", cid, cmd.State, timeout, cid)
		case <-t.C:
		}
	}
}

func reason(c commandView) string {
	switch {
	case c.Error != "":
		return c.Error
	case c.Result != nil && c.Result.Error != "":
		return c.Result.Error
	}
	return "no reason given"
}

func commandList(ctx context.Context, e env, args []string) error {
	fs := newFlags(e, "command list", "command list ID [-o table|json] [--limit N] [--before CID]")
	server, token := clientFlags(fs)
	out := outputFlag(fs)
	limit := fs.Int("limit", 0, "how many, newest first (server default 50, at most 500)")
	before := fs.String("before", "", "list commands older than this one (the previous page's next)")
	pos, err := parseFlags(fs, e, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"command list: give one device ID"}
	}
	q := url.Values{}
	if *limit != 0 {
		q.Set("limit", strconv.Itoa(*limit))
	}
	if *before != "" {
		q.Set("before", *before)
	}
	path := "/api/v1/devices/" + url.PathEscape(pos[0]) + "/commands"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var raw json.RawMessage
	if err := newClient(*server, *token).do(ctx, "GET", path, nil, &raw); err != nil {
		return fmt.Errorf("command list: %w", err)
	}
	if *out == "json" {
		return printJSON(e.stdout, raw)
	}
	var page struct {
		Commands []commandView `json:"commands"`
		Next     string        `json:"next"`
	}
	if err := json.Unmarshal(raw, &page); err != nil {
		return fmt.Errorf("command list: decode: %w", err)
	}
	if err := printCommands(e.stdout, page.Commands); err != nil {
		return err
	}
	if page.Next != "" {
		fmt.Fprintf(e.stdout, "(more: --before %s)\n", page.Next)
	}
	return nil
}

func commandShow(ctx context.Context, e env, args []string) error {
	return commandOne(ctx, e, args, "show", "GET")
}

func commandCancel(ctx context.Context, e env, args []string) error {
	return commandOne(ctx, e, args, "cancel", "DELETE")
}

func commandOne(ctx context.Context, e env, args []string, name, method string) error {
	fs := newFlags(e, "command "+name, "command "+name+" COMMAND-ID [-o table|json]")
	server, token := clientFlags(fs)
	out := outputFlag(fs)
	pos, err := parseFlags(fs, e, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"command " + name + ": give one command ID"}
	}
	var raw json.RawMessage
	if err := newClient(*server, *token).do(ctx, method, "/api/v1/commands/"+url.PathEscape(pos[0]), nil, &raw); err != nil {
		return fmt.Errorf("command %s: %w", name, err)
	}
	if *out == "json" {
		return printJSON(e.stdout, raw)
	}
	var cmd commandView
	if err := json.Unmarshal(raw, &cmd); err != nil {
		return fmt.Errorf("command %s: decode: %w", name, err)
	}
	return printCommands(e.stdout, []commandView{cmd})
}

// printCommands writes a table: one command a line, timestamps in UTC.
func printCommands(w io.Writer, cs []commandView) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tACTION\tTARGET\tVALUE\tSTATE\tRESULT\tCREATED\tSENT\tDELIVERED\tFINISHED")
	for _, c := range cs {
		result := "-"
		switch {
		case c.Result != nil && c.Result.Error != "":
			result = c.Result.Error
		case c.Result != nil && c.Result.Value != nil:
			result = strconv.Itoa(*c.Result.Value)
		case c.Result != nil:
			result = c.Result.Status
		case c.Error != "":
			result = c.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.ID, c.Action, dash(c.TargetRegister), intOrDash(c.Value),
			c.State, result, stamp(&c.CreatedAt), stamp(c.SentAt), stamp(c.DeliveredAt), stamp(c.FinishedAt))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func intOrDash(v *int) string {
	if v == nil {
		return "-"
	}
	return strconv.Itoa(*v)
}

func stamp(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05")
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	wire "github.com/ecowatt/ecowatt/topics/fota"
)

const fotaUsage = `usage: ecowatt fota SUBCOMMAND ...

  build-image --version V --size N [--fail-boot] -o FILE   make a test image for devicesim
  sign --key KEY --version V [-o MANIFEST] FILE           sign a manifest offline
  pubkey [--out FILE]                                      print the server's firmware public key (PEM)
  upload --version V [--manifest M] [--chunk-size N] FILE  upload firmware
  list | show VERSION                                      uploaded firmware
  update ID --version V                                    update one device
  device ID                                                a device's update progress
  rollback ID [--reason R] [--version V]                   return a device to its previous firmware
  rollout --version V --devices a,b|--all [--canary 2] [--batch-size 50] [--max-failure-percent 10]
  status [RID] [--watch]                                   rollout progress (all rollouts without RID)
  pause | resume | abort RID                               control a rollout`

func runFOTA(ctx context.Context, e env, args []string) error {
	if len(args) == 0 {
		return usageError{fotaUsage}
	}
	sub := map[string]func(context.Context, env, []string) error{
		"build-image": fotaBuildImage, "sign": fotaSign, "pubkey": fotaPubkey, "upload": fotaUpload,
		"list": fotaList, "show": fotaShow, "update": fotaUpdate, "device": fotaDevice, "rollback": fotaRollback,
		"rollout": fotaRollout, "status": fotaStatus,
		"pause": fotaAction("pause"), "resume": fotaAction("resume"), "abort": fotaAction("abort"),
	}
	fn, ok := sub[args[0]]
	if !ok {
		return usageError{fmt.Sprintf("unknown fota subcommand %q\n%s", args[0], fotaUsage)}
	}
	return fn(ctx, e, args[1:])
}

// parseSize reads a byte count: 1048576, 64KiB, 1MiB, 1M, 512k.
func parseSize(s string) (int, error) {
	mult := 1
	t := strings.ToLower(strings.TrimSpace(s))
	for _, u := range []struct {
		suffix string
		mult   int
	}{{"kib", 1 << 10}, {"mib", 1 << 20}, {"kb", 1 << 10}, {"mb", 1 << 20}, {"k", 1 << 10}, {"m", 1 << 20}} {
		if rest, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = rest, u.mult
			break
		}
	}
	n, err := strconv.Atoi(t)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: want a positive number of bytes, e.g. 1048576 or 1MiB", s)
	}
	return n * mult, nil
}

func fotaBuildImage(_ context.Context, e env, args []string) error {
	const synopsis = "fota build-image --version V --size N [--fail-boot] [--seed S] -o FILE"
	fs := newFlags(e, "fota build-image", synopsis)
	version := fs.String("version", "", "firmware version written into the app descriptor")
	size := fs.String("size", "1MiB", "image size in bytes (suffixes KiB and MiB allowed)")
	failBoot := fs.Bool("fail-boot", false, "mark the image so that a simulated device fails its self-test and rolls back")
	seed := fs.Int64("seed", 1, "seed of the filler bytes")
	out := fs.String("o", "", "output file")
	pos, err := parseFlags(fs, e, args)
	if err != nil {
		return err
	}
	if *version == "" || *out == "" || len(pos) != 0 {
		return usageError{"usage: ecowatt " + synopsis}
	}
	n, err := parseSize(*size)
	if err != nil {
		return usageError{err.Error()}
	}
	img, err := wire.BuildTestImage(*version, n, *failBoot, *seed)
	if err != nil {
		return fmt.Errorf("build-image: %w", err)
	}
	if err := os.WriteFile(*out, img, 0o644); err != nil {
		return fmt.Errorf("build-image: %w", err)
	}
	fmt.Fprintf(e.stdout, "wrote %s: ESP32 app image %s, %d bytes, fail-boot %t\n", *out, *version, n, *failBoot)
	return nil
}

func fotaSign(_ context.Context, e env, args []string) error {
	const synopsis = "fota sign --key KEY --version V [--chunk-size N] [-o MANIFEST] FILE"
	fs := newFlags(e, "fota sign", synopsis)
	keyPath := fs.String("key", "", "Ed25519 private key (PEM, from ecowatt keys gen)")
	version := fs.String("version", "", "firmware version; must match the image's app descriptor")
	chunk := fs.Int("chunk-size", wire.DefaultChunkSize, "chunk size in bytes (1024-32768)")
	out := fs.String("o", "", "manifest output file (default FILE.manifest.json)")
	pos, err := parseFlags(fs, e, args)
	if err != nil {
		return err
	}
	if *keyPath == "" || *version == "" || len(pos) != 1 {
		return usageError{"usage: ecowatt " + synopsis}
	}
	key, err := wire.LoadPrivateKey(*keyPath)
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	img, err := os.ReadFile(pos[0])
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	m, err := wire.BuildManifest(img, *version, *chunk, key)
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	if *out == "" {
		*out = pos[0] + ".manifest.json"
	}
	if err := os.WriteFile(*out, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	fmt.Fprintf(e.stdout, "wrote %s: signed manifest of %s, %d chunks of %d bytes\n", *out, m.Version, len(m.Chunks), m.ChunkSize)
	return nil
}

func fotaPubkey(ctx context.Context, e env, args []string) error {
	fs := newFlags(e, "fota pubkey", "fota pubkey [--out FILE]")
	server, token := clientFlags(fs)
	out := fs.String("out", "", "write the PEM to FILE instead of stdout")
	if _, err := parseFlags(fs, e, args); err != nil {
		return err
	}
	var k struct {
		PEM string `json:"pem"`
	}
	if err := newClient(*server, *token).do(ctx, "GET", "/api/v1/firmware/key", nil, &k); err != nil {
		return fmt.Errorf("fota pubkey: %w", err)
	}
	if *out != "" {
		return os.WriteFile(*out, []byte(k.PEM), 0o644)
	}
	_, err := io.WriteString(e.stdout, k.PEM)
	return err
}

// firmwareView is the API's firmware document.
type firmwareView struct {
	Version    string          `json:"version"`
	Size       int64           `json:"size"`
	Hash       string          `json:"hash"`
	ChunkSize  int             `json:"chunk_size"`
	Chunks     int             `json:"chunks"`
	Project    string          `json:"project_name"`
	FailBoot   bool            `json:"fail_boot"`
	Signed     string          `json:"signed"`
	UploadedAt time.Time       `json:"uploaded_at"`
	Manifest   json.RawMessage `json:"manifest,omitempty"`
}

func printFirmware(w io.Writer, fws []firmwareView) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tSIZE\tCHUNKS\tCHUNK SIZE\tPROJECT\tSIGNED\tFAIL-BOOT\tSHA-256\tUPLOADED")
	for _, f := range fws {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\t%t\t%.16s…\t%s\n", f.Version, f.Size, f.Chunks, f.ChunkSize, f.Project,
			f.Signed, f.FailBoot, f.Hash, f.UploadedAt.Local().Format(time.DateTime))
	}
	return tw.Flush()
}

func fotaUpload(ctx context.Context, e env, args []string) error {
	const synopsis = "fota upload --version V [--manifest M] [--chunk-size N] FILE [-o table|json]"
	fs := newFlags(e, "fota upload", synopsis)
	server, token := clientFlags(fs)
	out := outputFlag(fs)
	version := fs.String("version", "", "firmware version; must match the image's app descriptor")
	manifest := fs.String("manifest", "", "a manifest signed offline (ecowatt fota sign); the server checks it against its key")
	chunk := fs.Int("chunk-size", 0, "chunk size in bytes (1024-32768); default the server's")
	pos, err := parseFlags(fs, e, args)
	if err != nil {
		return err
	}
	if *version == "" || len(pos) != 1 {
		return usageError{"usage: ecowatt " + synopsis}
	}
	img, err := os.ReadFile(pos[0])
	if err != nil {
		return fmt.Errorf("fota upload: %w", err)
	}
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	mw.WriteField("version", *version)
	if *chunk != 0 {
		mw.WriteField("chunk_size", strconv.Itoa(*chunk))
	}
	if *manifest != "" {
		m, err := os.ReadFile(*manifest)
		if err != nil {
			return fmt.Errorf("fota upload: %w", err)
		}
		fw, _ := mw.CreateFormFile("manifest", "manifest.json")
		fw.Write(m)
	}
	fw, _ := mw.CreateFormFile("file", pos[0])
	fw.Write(img)
	if err := mw.Close(); err != nil {
		return fmt.Errorf("fota upload: %w", err)
	}
	var raw json.RawMessage
	if err := newClient(*server, *token).doRaw(ctx, "POST", "/api/v1/firmware", mw.FormDataContentType(), &body, &raw); err != nil {
		return fmt.Errorf("fota upload: %w", err)
	}
	if *out == "json" {
		return printJSON(e.stdout, raw)
	}
	var f firmwareView
	if err := json.Unmarshal(raw, &f); err != nil {
		return fmt.Errorf("fota upload: decode: %w", err)
	}
	return printFirmware(e.stdout, []firmwareView{f})
}

func fotaList(ctx context.Context, e env, args []string) error {
	fs := newFlags(e, "fota list", "fota list [-o table|json]")
	server, token := clientFlags(fs)
	out := outputFlag(fs)
	if _, err := parseFlags(fs, e, args); err != nil {
		return err
	}
	var raw json.RawMessage
	if err := newClient(*server, *token).do(ctx, "GET", "/api/v1/firmware", nil, &raw); err != nil {
		return fmt.Errorf("fota list: %w", err)
	}
	if *out == "json" {
		return printJSON(e.stdout, raw)
	}
	var l struct {
		Firmware []firmwareView `json:"firmware"`
	}
	if err := json.Unmarshal(raw, &l); err != nil {
		return fmt.Errorf("fota list: decode: %w", err)
	}
	return printFirmware(e.stdout, l.Firmware)
}

func fotaShow(ctx context.Context, e env, args []string) error {
	fs := newFlags(e, "fota show", "fota show VERSION")
	server, token := clientFlags(fs)
	pos, err := parseFlags(fs, e, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"usage: ecowatt fota show VERSION"}
	}
	var raw json.RawMessage
	if err := newClient(*server, *token).do(ctx, "GET", "/api/v1/firmware/"+url.PathEscape(pos[0]), nil, &raw); err != nil {
		return fmt.Errorf("fota show: %w", err)
	}
	return printJSON(e.stdout, raw)
}

// deviceFOTAView is backend.DeviceFOTA as the CLI shows it.
type deviceFOTAView struct {
	Target   string  `json:"target"`
	Rollout  string  `json:"rollout"`
	Active   bool    `json:"active"`
	Result   string  `json:"result"`
	State    string  `json:"state"`
	Version  string  `json:"version"`
	Received int     `json:"chunk_received"`
	Total    int     `json:"total_chunks"`
	Percent  float64 `json:"percent"`
	Reason   string  `json:"reason"`
	Detail   string  `json:"detail"`
}

func printDeviceFOTA(w io.Writer, id string, f deviceFOTAView) {
	fmt.Fprintf(w, "%s  %s %s  %s %d/%d", id, f.State, f.Version, bar(f.Percent, 20), f.Received, f.Total)
	if f.Active {
		fmt.Fprintf(w, "  (updating to %s)", f.Target)
	} else if f.Result != "" {
		fmt.Fprintf(w, "  (last update to %s: %s)", f.Target, f.Result)
	}
	if f.Reason != "" {
		fmt.Fprintf(w, "  reason: %s %s", f.Reason, f.Detail)
	}
	fmt.Fprintln(w)
}

func fotaUpdate(ctx context.Context, e env, args []string) error {
	const synopsis = "fota update ID --version V"
	fs := newFlags(e, "fota update", synopsis)
	server, token := clientFlags(fs)
	version := fs.String("version", "", "firmware version to install")
	pos, err := parseFlags(fs, e, args)
	if err != nil {
		return err
	}
	if *version == "" || len(pos) != 1 {
		return usageError{"usage: ecowatt " + synopsis}
	}
	var f deviceFOTAView
	err = newClient(*server, *token).do(ctx, "POST", "/api/v1/devices/"+url.PathEscape(pos[0])+"/fota", map[string]string{"version": *version}, &f)
	if err != nil {
		return fmt.Errorf("fota update: %w", err)
	}
	printDeviceFOTA(e.stdout, pos[0], f)
	return nil
}

func fotaDevice(ctx context.Context, e env, args []string) error {
	fs := newFlags(e, "fota device", "fota device ID [-o table|json]")
	server, token := clientFlags(fs)
	out := outputFlag(fs)
	pos, err := parseFlags(fs, e, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"usage: ecowatt fota device ID"}
	}
	var raw json.RawMessage
	if err := newClient(*server, *token).do(ctx, "GET", "/api/v1/devices/"+url.PathEscape(pos[0])+"/fota", nil, &raw); err != nil {
		return fmt.Errorf("fota device: %w", err)
	}
	if *out == "json" {
		return printJSON(e.stdout, raw)
	}
	var f deviceFOTAView
	if err := json.Unmarshal(raw, &f); err != nil {
		return fmt.Errorf("fota device: decode: %w", err)
	}
	printDeviceFOTA(e.stdout, pos[0], f)
	return nil
}

func fotaRollback(ctx context.Context, e env, args []string) error {
	const synopsis = "fota rollback ID [--reason R] [--version V]"
	fs := newFlags(e, "fota rollback", synopsis)
	server, token := clientFlags(fs)
	reason := fs.String("reason", "", "why (echoed by the device as the detail of its status)")
	version := fs.String("version", "", "the version expected in the previous slot; the device refuses otherwise")
	pos, err := parseFlags(fs, e, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"usage: ecowatt " + synopsis}
	}
	body := map[string]string{"reason": *reason, "version": *version}
	if err := newClient(*server, *token).do(ctx, "POST", "/api/v1/devices/"+url.PathEscape(pos[0])+"/rollback", body, nil); err != nil {
		return fmt.Errorf("fota rollback: %w", err)
	}
	fmt.Fprintf(e.stdout, "rollback requested for %s; the device reports rolled_back (or failed: no_previous_slot): ecowatt fota device %s\n", pos[0], pos[0])
	return nil
}

// bar draws a text progress bar of width cells for pct (0-100).
func bar(pct float64, width int) string {
	n := int(pct / 100 * float64(width))
	n = max(0, min(width, n))
	return "[" + strings.Repeat("#", n) + strings.Repeat("-", width-n) + "]" + fmt.Sprintf(" %5.1f%%", pct)
}

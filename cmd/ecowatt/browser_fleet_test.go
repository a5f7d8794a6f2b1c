package main

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestDashboardFleetPaging: with a fleet provisioned with labels, the
// fleet page shows one server page at a time with the total, moves by
// cursor with next and previous, filters on the server by selector (the
// counts as bars follow), and shows a bad selector's reason at the box.
// ECOWATT_BROWSER_FLEET sets the fleet's size (default 500; make
// test-scale runs 10,000).
func TestDashboardFleetPaging(t *testing.T) {
	b := newBrowser(t)
	s := startServer(t)
	fleet := 500
	if raw := os.Getenv("ECOWATT_BROWSER_FLEET"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 100 || n > 16_000 {
			t.Fatalf("ECOWATT_BROWSER_FLEET=%q: want a count of devices from 100 to 16000 (IDs keep 4 digits)", raw)
		}
		fleet = n / 10 * 10
	}
	colombo, galle := fleet*3/5, fleet*2/5
	for _, p := range []struct {
		prefix, label string
		n             int
	}{{"col", "site=colombo", colombo}, {"gal", "site=galle", galle}} {
		if out, err := s.cli(t, "device", "add", "--count", itoa(p.n), "--prefix", p.prefix, "--label", p.label, "--keys-out", t.TempDir()+"/keys.json"); err != nil {
			t.Fatalf("device add: %v\n%s", err, out)
		}
	}
	rows := `[...document.querySelectorAll("#fleet-table tr[data-device]")].map(tr => tr.dataset.device)`
	firstLast := func(first, last string, n int) string {
		return fmt.Sprintf(`(() => { const r = %s; return r.length === %d && r[0] === %q && r[r.length-1] === %q; })()`, rows, n, first, last)
	}
	pageInfo := `document.querySelector("#fleet-page")?.textContent`

	b.run(t, "sign in",
		chromedp.Navigate(s.HTTP+"/"),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		setValue("#token", s.Token),
		chromedp.Click(chromedp.CSS("#signin")))
	b.waitJS(t, 30*time.Second, "the first page of 50 and the total",
		firstLast(devID("col", 1), devID("col", 50), 50)+` && `+pageInfo+fmt.Sprintf(` === "1–50 of %d"`, fleet), pageInfo+` + " " + `+rows)
	b.waitJS(t, 10*time.Second, "presence bars over the whole fleet",
		fmt.Sprintf(`document.querySelector('#fleet-bars-online li[data-key="offline"]')?.dataset.count === "%d"`, colombo+galle),
		`document.querySelector("#fleet-bars")?.textContent`)

	b.run(t, "25 per page", setValue("#fleet-limit", "25"))
	b.waitJS(t, 10*time.Second, "page 1 of 25", firstLast(devID("col", 1), devID("col", 25), 25)+` && `+pageInfo+fmt.Sprintf(` === "1–25 of %d"`, fleet), pageInfo)
	b.run(t, "next", chromedp.Click(chromedp.CSS("#fleet-next")))
	b.waitJS(t, 10*time.Second, "page 2", firstLast(devID("col", 26), devID("col", 50), 25)+` && `+pageInfo+fmt.Sprintf(` === "26–50 of %d"`, fleet), pageInfo)
	b.run(t, "next", chromedp.Click(chromedp.CSS("#fleet-next")))
	b.waitJS(t, 10*time.Second, "page 3", firstLast(devID("col", 51), devID("col", 75), 25), pageInfo)
	b.run(t, "previous", chromedp.Click(chromedp.CSS("#fleet-prev")))
	b.waitJS(t, 10*time.Second, "back to page 2", firstLast(devID("col", 26), devID("col", 50), 25)+` && !document.querySelector("#fleet-prev").disabled`, pageInfo)
	b.run(t, "previous", chromedp.Click(chromedp.CSS("#fleet-prev")))
	b.waitJS(t, 10*time.Second, "back to page 1", firstLast(devID("col", 1), devID("col", 25), 25)+` && document.querySelector("#fleet-prev").disabled`, pageInfo)

	b.run(t, "selector", setValue("#fleet-q", "site=galle"))
	b.waitJS(t, 10*time.Second, "only galle, paged from its start",
		firstLast(devID("gal", 1), devID("gal", 25), 25)+` && `+pageInfo+fmt.Sprintf(` === "1–25 of %d"`, galle), pageInfo+` + " " + `+rows)
	b.waitJS(t, 10*time.Second, "bars of the selector",
		fmt.Sprintf(`document.querySelector('#fleet-bars-online li[data-key="offline"]')?.dataset.count === "%d" && document.querySelector("#fleet-summary").textContent.includes("0 of %d online")`, galle, galle),
		`document.querySelector("#fleet-bars")?.textContent + " | " + document.querySelector("#fleet-summary").textContent`)
	b.shot(t, "fleet-paged")

	b.run(t, "last page by next", chromedp.Click(chromedp.CSS("#fleet-next")))
	b.waitJS(t, 10*time.Second, "galle page 2", firstLast(devID("gal", 26), devID("gal", 50), 25), pageInfo)

	b.run(t, "bad selector", setValue("#fleet-q", "site in (galle"))
	b.waitJS(t, 10*time.Second, "the server's reason at the box",
		`document.querySelector("#fleet-q-error").textContent.includes("selector: at byte") && document.querySelector("#fleet-q").getAttribute("aria-invalid") === "true"`,
		`document.querySelector("#fleet-q-error").textContent`)

	b.run(t, "selector and status", setValue("#fleet-q", "site=colombo"), setValue("#fleet-status", "online"))
	b.waitJS(t, 10*time.Second, "no colombo device online",
		`document.querySelectorAll("#fleet-table tr[data-device]").length === 0 && `+pageInfo+` === "0 of 0" && document.querySelector("#fleet-q-error").textContent === ""`,
		pageInfo)
}

// devID is the ID `device add --count` gives its i-th device.
func devID(prefix string, i int) string { return fmt.Sprintf("%s-%04d", prefix, i) }

package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestDashboardFleetPaging: with a fleet provisioned with labels, the
// fleet page shows one server page at a time with the total, moves by
// cursor with next and previous, filters on the server by selector (the
// counts as bars follow), and shows a bad selector's reason at the box.
func TestDashboardFleetPaging(t *testing.T) {
	b := newBrowser(t)
	s := startServer(t)
	const colombo, galle = 300, 200
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
		firstLast("col-0001", "col-0050", 50)+` && `+pageInfo+` === "1–50 of 500"`, pageInfo+` + " " + `+rows)
	b.waitJS(t, 10*time.Second, "presence bars over the whole fleet",
		fmt.Sprintf(`document.querySelector('#fleet-bars-online li[data-key="offline"]')?.dataset.count === "%d"`, colombo+galle),
		`document.querySelector("#fleet-bars")?.textContent`)

	b.run(t, "25 per page", setValue("#fleet-limit", "25"))
	b.waitJS(t, 10*time.Second, "page 1 of 25", firstLast("col-0001", "col-0025", 25)+` && `+pageInfo+` === "1–25 of 500"`, pageInfo)
	b.run(t, "next", chromedp.Click(chromedp.CSS("#fleet-next")))
	b.waitJS(t, 10*time.Second, "page 2", firstLast("col-0026", "col-0050", 25)+` && `+pageInfo+` === "26–50 of 500"`, pageInfo)
	b.run(t, "next", chromedp.Click(chromedp.CSS("#fleet-next")))
	b.waitJS(t, 10*time.Second, "page 3", firstLast("col-0051", "col-0075", 25), pageInfo)
	b.run(t, "previous", chromedp.Click(chromedp.CSS("#fleet-prev")))
	b.waitJS(t, 10*time.Second, "back to page 2", firstLast("col-0026", "col-0050", 25)+` && !document.querySelector("#fleet-prev").disabled`, pageInfo)
	b.run(t, "previous", chromedp.Click(chromedp.CSS("#fleet-prev")))
	b.waitJS(t, 10*time.Second, "back to page 1", firstLast("col-0001", "col-0025", 25)+` && document.querySelector("#fleet-prev").disabled`, pageInfo)

	b.run(t, "selector", setValue("#fleet-q", "site=galle"))
	b.waitJS(t, 10*time.Second, "only galle, paged from its start",
		firstLast("gal-0001", "gal-0025", 25)+` && `+pageInfo+fmt.Sprintf(` === "1–25 of %d"`, galle), pageInfo+` + " " + `+rows)
	b.waitJS(t, 10*time.Second, "bars of the selector",
		fmt.Sprintf(`document.querySelector('#fleet-bars-online li[data-key="offline"]')?.dataset.count === "%d" && document.querySelector("#fleet-summary").textContent.includes("0 of %d online")`, galle, galle),
		`document.querySelector("#fleet-bars")?.textContent + " | " + document.querySelector("#fleet-summary").textContent`)
	b.shot(t, "fleet-paged")

	b.run(t, "last page by next", chromedp.Click(chromedp.CSS("#fleet-next")))
	b.waitJS(t, 10*time.Second, "galle page 2", firstLast("gal-0026", "gal-0050", 25), pageInfo)

	b.run(t, "bad selector", setValue("#fleet-q", "site in (galle"))
	b.waitJS(t, 10*time.Second, "the server's reason at the box",
		`document.querySelector("#fleet-q-error").textContent.includes("selector: at byte") && document.querySelector("#fleet-q").getAttribute("aria-invalid") === "true"`,
		`document.querySelector("#fleet-q-error").textContent`)

	b.run(t, "selector and status", setValue("#fleet-q", "site=colombo"), setValue("#fleet-status", "online"))
	b.waitJS(t, 10*time.Second, "no colombo device online",
		`document.querySelectorAll("#fleet-table tr[data-device]").length === 0 && `+pageInfo+` === "0 of 0" && document.querySelector("#fleet-q-error").textContent === ""`,
		pageInfo)
}

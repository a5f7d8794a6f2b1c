package fota

import (
	clist "container/list"
	"context"
	"errors"
	"fmt"
	"github.com/ecowatt/ecowatt/backend"
	"sync"

	"github.com/redis/go-redis/v9"
)

// DefaultImageCacheBytes is the default bound of the in-memory image cache:
// four images of the largest size devices accept (wire.MaxImageSize).
const DefaultImageCacheBytes = 64 << 20

// imageCache holds whole firmware images in memory, least recently used
// first out when their total size passes max. Images are immutable once
// uploaded, so an entry never goes stale; each version is read from Redis
// once per replica (concurrent misses wait for the first reader), checked
// against its signed manifest, and then every chunk is a slice of it.
type imageCache struct {
	max int64

	mu    sync.Mutex                // guards size, lru, items
	size  int64                     // bytes of the images held
	lru   *clist.List               // of *imageEntry, most recent at the front
	items map[string]*clist.Element // version -> element of lru
}

// imageEntry is one cached image; ready closes once data or err is set.
type imageEntry struct {
	version string
	ready   chan struct{}
	data    []byte // immutable once ready
	err     error
}

func newImageCache(max int64) *imageCache {
	return &imageCache{max: max, lru: clist.New(), items: map[string]*clist.Element{}}
}

// errTooBig says an image cannot be cached under the bound; the caller
// reads its chunks from Redis instead.
var errTooBig = errors.New("image larger than the image cache")

// image returns f's bytes, reading them with fill on a miss.
func (c *imageCache) image(ctx context.Context, f *firmware, fill func(context.Context) ([]byte, error)) ([]byte, error) {
	if f.Size > c.max {
		return nil, errTooBig
	}
	c.mu.Lock()
	if el, ok := c.items[f.Version]; ok {
		c.lru.MoveToFront(el)
		e := el.Value.(*imageEntry)
		c.mu.Unlock()
		select {
		case <-e.ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if e.err != nil {
			return nil, e.err
		}
		return e.data, nil
	}
	e := &imageEntry{version: f.Version, ready: make(chan struct{})}
	el := c.lru.PushFront(e)
	c.items[f.Version] = el
	c.mu.Unlock()

	data, err := fill(ctx)
	if err == nil {
		if _, verr := f.manifest.VerifyImage(data); verr != nil {
			err = fmt.Errorf("stored image of %s does not match its manifest: %w", f.Version, verr)
		}
	}
	c.mu.Lock()
	if err != nil {
		// Not kept: the next request tries again.
		c.lru.Remove(el)
		delete(c.items, f.Version)
	} else {
		c.size += int64(len(data))
		c.evictLocked(el)
	}
	e.data, e.err = data, err
	close(e.ready)
	c.mu.Unlock()
	return data, err
}

// evictLocked drops the least recently used images, never keep, until the
// total fits. Entries still being filled count for nothing and stay.
// c.mu held.
func (c *imageCache) evictLocked(keep *clist.Element) {
	for el := c.lru.Back(); el != nil && c.size > c.max; {
		prev := el.Prev()
		e := el.Value.(*imageEntry)
		select {
		case <-e.ready:
			if el != keep && e.err == nil {
				c.size -= int64(len(e.data))
				c.lru.Remove(el)
				delete(c.items, e.version)
			}
		default:
		}
		el = prev
	}
}

// chunks returns the named chunks of f (already checked against the
// manifest) as slices of the cached image, reading the image from Redis
// once per replica; an image too large for the cache is read chunk by
// chunk (GETRANGE) in one round trip.
func (s *Service) chunks(ctx context.Context, f *firmware, idx []int) ([][]byte, error) {
	img, err := s.images.image(ctx, f, func(ctx context.Context) ([]byte, error) {
		b, err := s.rdb.Get(ctx, s.fwImage(f.Version)).Bytes()
		if errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("read image of %s: not stored", f.Version)
		}
		if err != nil {
			return nil, backend.Unavailable("read image of "+f.Version, err)
		}
		return b, nil
	})
	if errors.Is(err, errTooBig) {
		return s.readChunks(ctx, f, idx)
	}
	if err != nil {
		return nil, err
	}
	out := make([][]byte, len(idx))
	for i, c := range idx {
		off, end, _ := f.manifest.ChunkBounds(c) // the caller checked c
		out[i] = img[off:end:end]
	}
	return out, nil
}

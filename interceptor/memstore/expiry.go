package memstore

import (
	"container/heap"
	"time"
)

// expiryQueue is a min-heap of map keys by end time. The in-memory stores
// push a key whenever they set its end, and pop the keys whose end has
// passed, so that pruning costs O(log n) per entry instead of a scan. A key
// may be in the queue more than once (its end moved later); the store
// checks the popped end against the entry's current end.
type expiryQueue []expiryItem

type expiryItem struct {
	end time.Time
	key string
}

func (q expiryQueue) Len() int           { return len(q) }
func (q expiryQueue) Less(i, j int) bool { return q[i].end.Before(q[j].end) }
func (q expiryQueue) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *expiryQueue) Push(x any)        { *q = append(*q, x.(expiryItem)) }
func (q *expiryQueue) Pop() any {
	old := *q
	it := old[len(old)-1]
	*q = old[:len(old)-1]
	return it
}

// add schedules key to expire at end.
func (q *expiryQueue) add(key string, end time.Time) {
	heap.Push(q, expiryItem{end: end, key: key})
}

// expire pops every item whose end is before now and calls drop for it.
func (q *expiryQueue) expire(now time.Time, drop func(key string, end time.Time)) {
	for q.Len() > 0 && (*q)[0].end.Before(now) {
		it := heap.Pop(q).(expiryItem)
		drop(it.key, it.end)
	}
}

import type { temporal } from '@temporalio/proto';
import { tsToMs } from '@temporalio/common/lib/time';

export type HistoryEvent = temporal.api.history.v1.IHistoryEvent;

/** When an activity attempt ran, by the server's clock (ms since the epoch). */
export interface ActivityInterval {
  activityType: string;
  start: number;
  end: number;
}

export function eventMs(event: HistoryEvent | undefined): number {
  if (!event?.eventTime) throw new Error('history event without a time');
  return tsToMs(event.eventTime);
}

/**
 * Every activity attempt the history records, from ActivityTaskStarted (written for the last
 * attempt) to its completed, failed, timed-out or cancelled event.
 */
export function activityIntervals(events: HistoryEvent[]): ActivityInterval[] {
  const typeOf = new Map<string, string>();
  const started = new Map<string, { activityType: string; start: number }>();
  const intervals: ActivityInterval[] = [];
  for (const e of events) {
    const scheduled = e.activityTaskScheduledEventAttributes;
    if (scheduled) typeOf.set(String(e.eventId), scheduled.activityType?.name ?? '');
    const attempt = e.activityTaskStartedEventAttributes;
    if (attempt) {
      const activityType = typeOf.get(String(attempt.scheduledEventId)) ?? '';
      started.set(String(e.eventId), { activityType, start: eventMs(e) });
    }
    const closed =
      e.activityTaskCompletedEventAttributes ??
      e.activityTaskFailedEventAttributes ??
      e.activityTaskTimedOutEventAttributes ??
      e.activityTaskCanceledEventAttributes;
    const run = closed?.startedEventId != null ? started.get(String(closed.startedEventId)) : undefined;
    if (run) intervals.push({ ...run, end: eventMs(e) });
  }
  return intervals;
}

/** Length of the union of intervals: activities that ran side by side count once. */
export function unionMs(intervals: ActivityInterval[]): number {
  const sorted = [...intervals].sort((a, b) => a.start - b.start);
  let total = 0;
  let end = -Infinity;
  for (const i of sorted) {
    if (i.end <= end) continue;
    total += i.end - Math.max(i.start, end);
    end = i.end;
  }
  return total;
}

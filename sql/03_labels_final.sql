-- creates: labels_final (one row per item and label set that has a decided value)
-- reads:   labels (adjudications, retractions), labels_current (view over labels), label_sets
-- params:  (none)
-- method: 'adjudicated' (an adjudicator decided; wins over votes), 'unanimous' (2+ labels, all equal),
--         'majority' (2+ labels, one value has strictly the most votes), 'single' (one label),
--         'latest' (free-text label sets: the most recent text). Ties nobody adjudicated are left
--         out: they wait in the adjudication queue.
create or replace table labels_final as
with
events as (
    select * from labels
),

sets as (
    select * from label_sets
),

retracted as (
    select distinct retracts as label_id
    from events
    where kind = 'retraction'
),

adjudications as (
    select
        e.item_id,
        e.label_set,
        e.value,
        row_number() over (
            partition by e.item_id, e.label_set
            order by e.created_at desc, e.label_id desc
        ) as adjudication_rank
    from events as e
    left join retracted as r on e.label_id = r.label_id
    where e.kind = 'adjudication' and r.label_id is null
),

latest_adjudication as (
    select item_id, label_set, value
    from adjudications
    where adjudication_rank = 1
),

current_labels as (
    select
        c.item_id,
        c.label_set,
        c.annotator,
        c.value,
        c.created_at,
        coalesce(s.kind, 'choice') as set_kind
    from labels_current as c
    left join sets as s on c.label_set = s.label_set
    where c.kind = 'label'
),

item_totals as (
    select
        item_id,
        label_set,
        count(*) as n_labels,
        count(distinct value) as n_values
    from current_labels
    group by item_id, label_set
),

vote_counts as (
    select
        item_id,
        label_set,
        value,
        count(*) as n_votes
    from current_labels
    where set_kind = 'choice'
    group by item_id, label_set, value
),

top_votes as (
    select
        item_id,
        label_set,
        value,
        n_votes,
        count(*) over (partition by item_id, label_set, n_votes) as n_tied,
        rank() over (partition by item_id, label_set order by n_votes desc) as vote_rank
    from vote_counts
),

voted as (
    select
        t.item_id,
        t.label_set,
        t.value,
        case
            when n.n_labels = 1 then 'single'
            when n.n_values = 1 then 'unanimous'
            else 'majority'
        end as method
    from top_votes as t
    inner join item_totals as n on t.item_id = n.item_id and t.label_set = n.label_set
    where t.vote_rank = 1 and t.n_tied = 1
),

latest_text as (
    select
        item_id,
        label_set,
        value,
        'latest' as method,
        row_number() over (
            partition by item_id, label_set
            order by created_at desc, annotator
        ) as text_rank
    from current_labels
    where set_kind = 'text'
),

undecided_by_adjudicator as (
    select item_id, label_set, value, method from voted
    union all
    select item_id, label_set, value, method from latest_text where text_rank = 1
),

decided as (
    select item_id, label_set, value, 'adjudicated' as method
    from latest_adjudication
    union all
    select u.item_id, u.label_set, u.value, u.method
    from undecided_by_adjudicator as u
    left join latest_adjudication as a on u.item_id = a.item_id and u.label_set = a.label_set
    where a.item_id is null
),

final as (
    select
        d.item_id,
        d.label_set,
        d.value,
        d.method,
        coalesce(n.n_labels, 0) as n_labels,
        coalesce(v.n_votes, 0) as n_votes
    from decided as d
    left join item_totals as n on d.item_id = n.item_id and d.label_set = n.label_set
    left join vote_counts as v
        on d.item_id = v.item_id and d.label_set = v.label_set and d.value = v.value
)

select * from final
order by label_set, item_id

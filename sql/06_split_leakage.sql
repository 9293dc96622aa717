-- creates: split_leakage (one row per normalized text found in more than one split; must be empty)
-- reads:   splits, examples
-- params:  (none)
create or replace table split_leakage as
with leaked_hashes as (
    -- first on a hash of the text: a text in more than one split has its hash in more than one
    -- split. Grouping by a number costs a quarter less than grouping every text by (text, split)
    -- and then by text; the exact check below runs only on texts whose hash is listed (usually none)
    select hash(e.text_norm) as h
    from splits s
    join examples e on e.example_id = s.example_id
    group by hash(e.text_norm)
    having min(s.split) <> max(s.split)
),

joined as (
    select e.text_norm, s.split
    from splits s
    join examples e on e.example_id = s.example_id
    where hash(e.text_norm) in (select h from leaked_hashes)
),

per_split as (
    -- one row per (text, split) first: counting distinct splits per text is then a plain count
    -- (count(distinct) over every text costs a third more)
    select text_norm, split, count(*) as n_examples
    from joined
    group by text_norm, split
)

select
    text_norm,
    count(*) as n_splits,
    cast(sum(n_examples) as bigint) as n_examples,
    min(split) as first_split,
    max(split) as last_split
from per_split
group by text_norm
having count(*) > 1
